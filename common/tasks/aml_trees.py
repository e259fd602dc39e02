"""The strong non-LLM baseline for AML cases: gradient-boosted trees (LightGBM) on the case features of
`aml_features` (the same numbers the model's prompt states), with the decision threshold tuned on a validation
split. Trained on one bank's cases (local) or on every bank's pooled (centralized).

Federated boosted trees are not offered: LightGBM has no protocol for combining trees grown at several parties
without pooling rows or per-feature histograms (its distributed mode exchanges histograms between machines of one
trust domain), so a bank would reveal per-bin counts of its customers' features to the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .aml import AmlCase
from .aml_features import FEATURES, case_features

PARAMS = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 5,
          "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1,
          "num_threads": 1, "deterministic": True, "force_row_wise": True}


def feature_matrix(cases: list[AmlCase], reporting_threshold: float = 10_000.0) -> np.ndarray:
    return np.array([[case_features(c, reporting_threshold)[k] for k in FEATURES] for c in cases], dtype=np.float64)


def labels(cases: list[AmlCase]) -> np.ndarray:
    return np.array([int(c.suspicious) for c in cases], dtype=np.int32)


def best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability threshold with the highest F1 on (y, p); 0.5 when y holds one class only."""
    if y.min() == y.max():
        return 0.5
    best, best_f1 = 0.5, -1.0
    for t in np.unique(p):
        pred = p >= t
        tp = int(np.sum(pred & (y == 1)))
        f1 = 2 * tp / max(1, int(pred.sum()) + int(y.sum()))
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


@dataclass
class TreesModel:
    booster: object
    threshold: float
    reporting_threshold: float

    def scores(self, cases: list[AmlCase]) -> np.ndarray:
        """P(laundering) per case."""
        if not cases:
            return np.zeros(0)
        return np.asarray(self.booster.predict(feature_matrix(cases, self.reporting_threshold)), dtype=np.float64)

    def predict(self, cases: list[AmlCase]) -> np.ndarray:
        return self.scores(cases) >= self.threshold


def train_trees(cases: list[AmlCase], seed: int = 0, rounds: int = 200, val_share: float = 0.2,
                reporting_threshold: float = 10_000.0, params: dict | None = None) -> TreesModel:
    """Boosted trees on `cases`: a seeded, label-stratified validation share picks the number of trees (early
    stopping) and the F1-best threshold, then the trees are grown on every case with that many rounds."""
    import lightgbm as lgb

    if len(cases) < 4 or len({c.suspicious for c in cases}) < 2:
        raise ValueError(f"boosted trees need both labels among at least 4 cases; got {len(cases)} cases with "
                         f"labels {sorted({c.suspicious for c in cases})}")
    x, y = feature_matrix(cases, reporting_threshold), labels(cases)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), dtype=bool)
    for cls in (0, 1):  # stratified: each label keeps its share in the validation rows
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        val[idx[: max(1, int(round(val_share * len(idx))))]] = True
    p = {**PARAMS, "seed": seed, **(params or {})}
    fit = lgb.train(p, lgb.Dataset(x[~val], y[~val]), num_boost_round=rounds,
                    valid_sets=[lgb.Dataset(x[val], y[val])], callbacks=[lgb.early_stopping(20, verbose=False)])
    n = max(1, fit.best_iteration or rounds)
    threshold = best_threshold(y[val], np.asarray(fit.predict(x[val], num_iteration=n)))
    booster = lgb.train(p, lgb.Dataset(x, y), num_boost_round=n)
    return TreesModel(booster, threshold, reporting_threshold)
