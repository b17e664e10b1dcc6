"""Shared building blocks of the training scripts: data, models, losses, schedule, metrics."""
