"""The training-size sweep: nested patient subsets, its table and figure, and its Prefect steps."""
