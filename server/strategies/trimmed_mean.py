"""Coordinate-wise trimmed mean of the banks' LoRA arrays (drops the extreme values at each coordinate)."""

from __future__ import annotations

from ..aggregation import trimmed_mean
from .fedavg import LoraFedAvg


class LoraTrimmedMean(LoraFedAvg):
    """Cuts floor(trim_fraction · n) values at each end of every coordinate (with 5 banks and 0.2, one each side).

    Parameters
    ----------
    trim_fraction : float (default: federation.aggregation.trim_fraction = 0.2)
        Share of the values cut at each end, in [0, 0.5).
    """

    name = "trimmed_mean"
    refuses = {"central_dp": "the noise is calibrated to a mean of clipped updates, not to a trimmed mean",
               "secure_aggregation": "a trimmed mean needs every update in clear"}
    legacy_base = None

    @classmethod
    def options(cls, cfg) -> dict:
        return {"trim_fraction": cfg.federation.aggregation.trim_fraction}

    def settings(self) -> dict:
        return {"trim_fraction": self.trim_fraction}

    def __init__(self, *, trim_fraction: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.trim_fraction = trim_fraction

    def combine(self, updates, weights, entry):
        if int(self.trim_fraction * len(updates)) == 0:
            entry.setdefault("notes", []).append(
                f"trimmed mean over {len(updates)} updates cuts nothing at trim_fraction {self.trim_fraction}")
        return trimmed_mean(updates, self.trim_fraction)
