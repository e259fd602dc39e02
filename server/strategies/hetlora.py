"""HetLoRA (Cho et al., EMNLP 2024): banks train at their own LoRA rank (a small machine takes rank 4 while others
take 16). The global adapter has the largest rank; a bank trains its first r_i components (the client truncates
what it receives) and the server pads them back, averaging each component over the banks that hold it.

Every bank's LoRA alpha is scaled with its rank (alpha_i = alpha · r_i / r), so the first r_i components mean the
same thing at every rank.
"""

from __future__ import annotations

from ..aggregation import hetero_rank_mean
from .fedavg import LoraFedAvg


class HetLora(LoraFedAvg):
    """Banks' ranks: node config lora-rank, else federation.aggregation.bank_ranks, else lora.r (the global rank)."""

    name = "hetlora"
    lower_rank = True
    refuses = {"central_dp": "updates of different ranks do not share one clipping space with the global adapter",
               "secure_aggregation": "secure aggregation sums vectors of one shape; banks of different ranks send "
                                     "different shapes"}

    def settings(self) -> dict:
        return {"lower ranks": "accepted"}

    def combine(self, updates, weights, entry):
        entry["ranks"] = sorted({next(v.shape[0] for k, v in u.items() if ".lora_A." in k) for u in updates})
        return hetero_rank_mean(updates, weights, self._reference)
