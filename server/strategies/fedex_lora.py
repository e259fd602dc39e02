"""FedEx-LoRA (Singhal et al., ACL 2025): exact aggregation. A and B are averaged as in FedAvg, and the residual
scale·(mean(B·A) − mean(B)·mean(A)) is added to the frozen base weight of each adapted module. The server keeps
the accumulated residual, sends it with every round (banks train on base + residual) and saves it with every
checkpoint, so the served model's weights equal the exact mean of the banks' adapted weights.

Cost: the residual is dense (out × in per adapted module), so the download is far larger than the adapter;
it cannot sit on a quantized base (refused at config load), and secure aggregation would have to sum the dense
products B_i·A_i rather than the factors.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ...common.adapter import arrays_to_record, set_base_residual
from ..aggregation import fedex_residual
from .fedavg import LoraFedAvg


class FedExLora(LoraFedAvg):
    """Parameters
    ----------
    scale : float (default: lora.alpha / lora.r)
        LoRA's scaling, which the residual carries.
    """

    name = "fedex_lora"
    refuses = {"central_dp": "its base residual is built from the individual updates and released without noise",
               "secure_aggregation": "its exact residual needs each bank's B_i·A_i, not only the sums of A and B"}
    legacy_base = None

    @classmethod
    def options(cls, cfg) -> dict:
        return {"scale": cfg.lora.alpha / cfg.lora.r}

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.model.quantization != "none":
            raise ValueError("federation.strategy fedex_lora folds the aggregation residual into the base weights, "
                             "which a quantized base cannot hold; use model.quantization none or another strategy")

    def settings(self) -> dict:
        return {"scale": self.scale}

    def __init__(self, *, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = scale  # LoRA alpha / r
        self.residual: OrderedDict[str, np.ndarray] = OrderedDict()

    def combine(self, updates, weights, entry):
        mean, residual = fedex_residual(updates, weights, self.scale)
        for name, r in residual.items():
            self.residual[name] = (self.residual[name] + r) if name in self.residual else r
        entry["residual_norm"] = float(np.sqrt(sum(float(np.sum(r.astype(np.float64) ** 2)) for r in residual.values())))
        return mean

    def extra_content(self):
        return {"base-residual": arrays_to_record(self.residual)} if self.residual else {}

    def prepare_model(self, model) -> None:
        set_base_residual(model, self.residual, source="server residual")

    def state_arrays(self):
        return self.residual

    def restore_state(self, arrays) -> None:
        self.residual = OrderedDict((k, np.asarray(v, dtype=np.float32)) for k, v in arrays.items())
