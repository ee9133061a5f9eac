"""The train-classifier stage's Prefect steps (the training itself is in models/)."""
