"""Training inference-free sparse encoders: data, teachers and the training run (see docs/training.md)."""
