"""The evaluate-model stage: metrics and the HTML evaluation report."""
