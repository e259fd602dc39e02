"""FedSA-LoRA (Guo et al., ICLR 2025): A carries what banks share and is averaged; each bank keeps its own B across
rounds (client.app keeps it in the node's state and on the bank's disk), so every bank serves its own model.

There is no single global model: the server checkpoints the shared A and scores nothing on the benchmark sets;
each bank reports its own model on its held-out rows.
"""

from __future__ import annotations

from .fedavg import LoraFedAvg


class FedSaLora(LoraFedAvg):
    """No options: banks send A and keep their own B (node state and the bank's disk)."""

    name = "fedsa_lora"
    parts = "A"
    local = "B"
    personalised = True
