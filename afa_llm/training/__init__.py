"""Training: the Trainer (setup, step, validate, save), its checkpoints and its evaluations."""
