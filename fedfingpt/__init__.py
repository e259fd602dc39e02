"""fedfingpt: federated LoRA fine-tuning of financial language models across banks."""

__version__ = "0.1.0"
