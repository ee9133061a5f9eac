"""The score-studies stage: every frame of new studies through a trained run, to a worklist."""
