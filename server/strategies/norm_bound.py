"""Update-norm bounding: each bank's change to the global adapter is scaled down to a bounded L2 norm before the
weighted mean, so one bank's oversized update moves the model at most as far as an honest one."""

from __future__ import annotations

from ..aggregation import norm_bounded_mean
from .fedavg import LoraFedAvg


class LoraNormBound(LoraFedAvg):
    """Parameters
    ----------
    bound : float or None (default: federation.aggregation.norm_bound = None)
        L2 bound on a bank's update; None: factor × the median of the round's update norms (adapts as updates
        shrink over rounds).
    factor : float (default: federation.aggregation.norm_bound_factor = 1.0)
        Multiple of the median norm when the bound adapts.
    """

    name = "norm_bound"
    refuses = {"secure_aggregation": "server-side norm bounding needs every update in clear (bound on the bank's "
                                     "side instead)"}
    legacy_base = None

    @classmethod
    def options(cls, cfg) -> dict:
        a = cfg.federation.aggregation
        return {"bound": a.norm_bound, "factor": a.norm_bound_factor}

    def settings(self) -> dict:
        return {"bound": self.bound if self.bound is not None else f"{self.factor} x median norm"}

    def __init__(self, *, bound: float | None, factor: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bound, self.factor = bound, factor

    def combine(self, updates, weights, entry):
        out, used, norms = norm_bounded_mean(updates, weights, self._reference, self.bound, self.factor)
        entry["norm_bound"] = {"bound": used, "norms": [round(n, 6) for n in norms],
                               "clipped": sum(n > used for n in norms)}
        return out
