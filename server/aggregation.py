"""Aggregation arithmetic over named LoRA arrays, apart from any framework, so every strategy (and a secure-
aggregation path) calls the same tested functions; plus the checks that decide whether an update is usable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

NamedArrays = dict[str, np.ndarray]


def weighted_mean(updates: Sequence[NamedArrays], weights: Sequence[float]) -> "OrderedDict[str, np.ndarray]":
    """FedAvg: sum_i w_i x_i / sum_i w_i per array name (float64 accumulation, returned in the inputs' dtype)."""
    if not updates:
        raise ValueError("no updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(w)}")
    w = w / w.sum()
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, first in updates[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for wi, upd in zip(w, updates):
            acc += wi * upd[name]
        out[name] = acc.astype(first.dtype)
    return out


def update_problem(update: NamedArrays, reference: NamedArrays, num_examples: float, max_examples: float) -> str | None:
    """Why an update cannot be aggregated (None when it can): names, shapes, finiteness, example count."""
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        return f"array names differ from the global adapter (missing {missing[:2]}, unexpected {extra[:2]})"
    for name, ref in reference.items():
        arr = update[name]
        if tuple(arr.shape) != tuple(ref.shape):
            return f"{name} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if not np.issubdtype(arr.dtype, np.floating):
            return f"{name} has dtype {arr.dtype}, expected a float type"
        if not np.all(np.isfinite(arr)):
            return f"{name} holds NaN or Inf values"
    if not np.isfinite(num_examples) or num_examples <= 0 or num_examples > max_examples:
        return f"implausible example count {num_examples} (expected 1..{max_examples:g})"
    return None
