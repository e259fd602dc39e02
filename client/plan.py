"""What a bank does differently under the federation's strategy, read from the round's config the server sends.

The strategy (server/strategies/) decides; the bank only follows these keys, the way Flower's FedProx sends
`proximal-mu`. Absent keys mean plain FedAvg: train and send A and B, keep nothing at home.
"""

from __future__ import annotations

from dataclasses import dataclass

MATRICES = ("", "A", "B", "AB")


@dataclass(frozen=True)
class RoundPlan:
    shared: str = "AB"  # the LoRA matrices the bank receives, trains and sends
    frozen: str = ""  # matrices kept fixed while training (FFA-LoRA: A)
    local: str = ""  # matrices the bank keeps across rounds instead of receiving them (FedSA-LoRA: B)
    any_rank: bool = False  # the bank may train below the global rank (HetLoRA)
    proximal_mu: float = 0.0  # FedProx's weight of (mu/2)·||w − w_global||²

    @classmethod
    def from_config(cls, conf: dict) -> "RoundPlan":
        plan = cls(shared=str(conf.get("lora-shared", "AB")), frozen=str(conf.get("lora-frozen", "")),
                   local=str(conf.get("lora-local", "")), any_rank=bool(conf.get("lora-any-rank", False)),
                   proximal_mu=float(conf.get("proximal-mu", 0.0)))
        for key, value in (("lora-shared", plan.shared), ("lora-frozen", plan.frozen), ("lora-local", plan.local)):
            if value not in MATRICES:
                raise ValueError(f"round config {key}={value!r}: expected one of {MATRICES}")
        if not plan.shared:
            raise ValueError("round config lora-shared is empty: the bank would send nothing")
        if plan.local not in ("", "B"):
            raise ValueError(f"round config lora-local={plan.local!r}: a bank keeps only its own B at home")
        if set(plan.local) & set(plan.shared):
            raise ValueError(f"round config: lora-local {plan.local} overlaps lora-shared {plan.shared}")
        if plan.proximal_mu < 0:
            raise ValueError(f"round config proximal-mu={plan.proximal_mu}: must be >= 0")
        return plan
