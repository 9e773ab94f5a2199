"""The training loop, batching, checkpoints and progress logging."""
