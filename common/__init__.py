"""What the bank client, the coordinator and the inference service share: config, models, adapters, tasks, metrics."""
