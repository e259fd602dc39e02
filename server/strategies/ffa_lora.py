"""FFA-LoRA (Sun et al., ICLR 2024): every party builds the same seeded random A and freezes it; only B is trained,
sent and averaged. mean(B)·A = mean(B·A), so the average is exact, and the traffic is about half of FedAvg's."""

from __future__ import annotations

from .fedavg import LoraFedAvg


class FfaLora(LoraFedAvg):
    """No options: the banks freeze A (the same seeded initial A everywhere) and send B."""

    name = "ffa_lora"
    parts = "B"
    frozen = "A"
