"""Coordinate-wise median of the banks' LoRA arrays (robust to a minority of bad or malicious banks)."""

from __future__ import annotations

from ..aggregation import coordinate_median
from .fedavg import LoraFedAvg


class LoraMedian(LoraFedAvg):
    """Unweighted: a bank cannot buy influence by reporting a large example count. The median of the arrays is the
    global adapter plus the median of the updates (the median commutes with a shift). No options."""

    name = "median"
    refuses = {"central_dp": "the noise is calibrated to a mean of clipped updates, not to a median",
               "secure_aggregation": "a coordinate-wise median needs every update in clear"}
    legacy_base = None

    def combine(self, updates, weights, entry):
        return coordinate_median(updates)
