"""Training: the manifest's data and augmentation, the optimiser and epoch loop, checkpoints, the run, torchrun."""
