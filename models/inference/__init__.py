"""Inference and provenance: predictions from a checkpoint, and the record of what a model was trained on."""
