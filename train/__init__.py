"""Training: data, stages, loop, checkpoints (see the training issue)."""
