"""The coordinator: Flower ServerApp, LoRA-aware strategies, round checkpoints and reports."""
