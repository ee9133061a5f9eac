"""Weights: where a backbone's starting weights come from (ImageNet files, a file, an earlier run) and how they are loaded."""
