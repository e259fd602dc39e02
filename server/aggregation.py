"""Aggregation arithmetic over named LoRA arrays, apart from any framework, so every strategy (and a secure-
aggregation path) calls the same tested functions; plus the checks that decide whether an update is usable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from ..common.adapter import NamedArrays, rank_of, lora_pairs




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


def update_problem(update: NamedArrays, reference: NamedArrays, num_examples: float, max_examples: float,
                   lower_rank: bool = False) -> str | None:
    """Why an update cannot be aggregated (None when it can): names, shapes (or, with lower_rank, a rank
    truncation of the global shapes), finiteness, example count."""
    missing = sorted(set(reference) - set(update))
    extra = sorted(set(update) - set(reference))
    if missing or extra:
        return f"array names differ from the global adapter (missing {missing[:2]}, unexpected {extra[:2]})"
    if lower_rank and (problem := rank_problem(update, reference)):
        return problem
    for name, ref in reference.items():
        arr = update[name]
        if not lower_rank and tuple(arr.shape) != tuple(ref.shape):
            return f"{name} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if not np.issubdtype(arr.dtype, np.floating):
            return f"{name} has dtype {arr.dtype}, expected a float type"
        if not np.all(np.isfinite(arr)):
            return f"{name} holds NaN or Inf values"
    if not np.isfinite(num_examples) or num_examples <= 0 or num_examples > max_examples:
        return f"implausible example count {num_examples} (expected 1..{max_examples:g})"
    return None


# ------------------------------------------------------------------------------------------ LoRA structure

def product_mean(updates: Sequence[NamedArrays], weights: Sequence[float]) -> "OrderedDict[str, np.ndarray]":
    """The exact mean of the low-rank products, sum_i w_i B_i @ A_i per module (weights normalised)."""
    w = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for prefix, (a, b) in lora_pairs(updates[0]).items():
        out[prefix] = sum(wi * (u[b].astype(np.float64) @ u[a].astype(np.float64)) for wi, u in zip(w, updates))
    return out


def fedex_residual(updates: Sequence[NamedArrays], weights: Sequence[float], scale: float):
    """FedEx-LoRA: (mean A and B, residual per module) with residual = scale·(mean(B·A) − mean(B)·mean(A)).

    Adding the residual to the frozen base weight makes base + residual + scale·mean(B)·mean(A) equal to the exact
    mean of the banks' adapted weights."""
    mean = weighted_mean(updates, weights)
    exact = product_mean(updates, weights)
    residual: OrderedDict[str, np.ndarray] = OrderedDict()
    for prefix, (a, b) in lora_pairs(mean).items():
        naive = mean[b].astype(np.float64) @ mean[a].astype(np.float64)
        residual[prefix] = (scale * (exact[prefix] - naive)).astype(np.float32)
    return mean, residual


# ------------------------------------------------------------------------------------------ robust

def coordinate_median(updates: Sequence[NamedArrays]) -> "OrderedDict[str, np.ndarray]":
    """Coordinate-wise median (unweighted: a bank's reported size must not buy it influence)."""
    if not updates:
        raise ValueError("no updates to aggregate")
    return OrderedDict((k, np.median(np.stack([u[k] for u in updates]), axis=0).astype(v.dtype))
                       for k, v in updates[0].items())


def trimmed_mean(updates: Sequence[NamedArrays], trim_fraction: float) -> "OrderedDict[str, np.ndarray]":
    """Coordinate-wise mean after cutting floor(trim_fraction · n) values at each end (unweighted)."""
    if not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction}")
    n = len(updates)
    if n == 0:
        raise ValueError("no updates to aggregate")
    cut = int(trim_fraction * n)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, v in updates[0].items():
        stacked = np.sort(np.stack([u[k] for u in updates]).astype(np.float64), axis=0)
        out[k] = stacked[cut : n - cut].mean(axis=0).astype(v.dtype)
    return out


def update_norm(update: NamedArrays, reference: NamedArrays) -> float:
    """L2 norm of a bank's change to the global adapter, over all its arrays together."""
    return float(np.sqrt(sum(np.sum((update[k].astype(np.float64) - reference[k]) ** 2) for k in reference)))


def norm_bounded_mean(updates: Sequence[NamedArrays], weights: Sequence[float], reference: NamedArrays,
                      bound: float | None, factor: float = 1.0):
    """Weighted mean of the banks' changes after scaling each change down to L2 norm <= bound (None: factor × the
    median norm of this round's changes). Returns (aggregate, bound used, per-update norms)."""
    norms = [update_norm(u, reference) for u in updates]
    used = float(bound) if bound is not None else factor * float(np.median(norms))
    clipped = []
    for u, nrm in zip(updates, norms):
        s = min(1.0, used / nrm) if nrm > 0 else 1.0
        clipped.append({k: reference[k] + s * (u[k].astype(np.float64) - reference[k]) for k in reference})
    mean = weighted_mean(clipped, weights)
    return OrderedDict((k, mean[k].astype(reference[k].dtype)) for k in reference), used, norms


# ------------------------------------------------------------------------------------------ heterogeneous ranks

def hetero_rank_mean(updates: Sequence[NamedArrays], weights: Sequence[float], reference: NamedArrays):
    """HetLoRA aggregation of banks with ranks <= the global rank: each rank component is the weighted mean over the
    banks that hold it (zero-padding without diluting it by the banks that do not); components no bank holds keep
    the global value."""
    w = np.asarray(weights, dtype=np.float64)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, ref in reference.items():
        is_a = ".lora_A." in k
        acc = np.zeros(ref.shape, dtype=np.float64)
        tot = np.zeros(ref.shape[0] if is_a else ref.shape[1], dtype=np.float64)
        for wi, u in zip(w, updates):
            r = rank_of(k, u[k])
            if is_a:
                acc[:r] += wi * u[k]
            else:
                acc[:, :r] += wi * u[k]
            tot[:r] += wi
        held = tot > 0
        res = ref.astype(np.float64).copy()
        if is_a:
            res[held] = acc[held] / tot[held, None]
        else:
            res[:, held] = acc[:, held] / tot[None, held]
        out[k] = res.astype(ref.dtype)
    return out


def rank_problem(update: NamedArrays, reference: NamedArrays) -> str | None:
    """Why a lower-rank update does not fit the global adapter (None when every array is a rank truncation)."""
    ranks = set()
    for k, ref in reference.items():
        a = update.get(k)
        if a is None:
            return f"{k} is missing"
        r = rank_of(k, a)
        want = (r, ref.shape[1]) if ".lora_A." in k else (ref.shape[0], r)
        if a.ndim != 2 or tuple(a.shape) != want or r < 1 or r > rank_of(k, ref):
            return f"{k} has shape {tuple(a.shape)}: not a rank-<= {rank_of(k, ref)} truncation of {tuple(ref.shape)}"
        ranks.add(r)
    if len(ranks) > 1:
        return f"the update mixes ranks {sorted(ranks)} across modules"
    return None
