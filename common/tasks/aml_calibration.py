"""The AML risk score as a calibrated probability, and the alert threshold, fitted on validation cases.

The model's P(suspicious) (the decision token's likelihood, `common.evaluate.score_aml`) ranks cases but is not a
probability one can act on: a 135M model trained on a few thousand cases is over- or under-confident. Platt scaling
(a logistic map of the score's logit) fitted on validation cases the model never trained on makes it one; the alert
threshold is the calibrated probability that maximises F1 on the same cases.

The fit reads score histograms, not cases: a bank sends the counts of its validation scores per bin and label
(`score_histogram`), which say nothing about any one case, and the federation fits on their sum. Local and
centralized training use the same code on one histogram.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

FILE = "aml_calibration.json"  # beside the adapter's weights; the inference service reads it when present
LOGIT_RANGE = 12.0  # scores are binned by logit in [-12, 12] (P from 6e-6 to 1 - 6e-6); outside it they clip
BINS = 240


class CalibrationError(ValueError):
    """A calibration that cannot be fitted or read (named by its input)."""


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z) -> np.ndarray:
    z = np.clip(np.asarray(z, dtype=np.float64), -500, 500)
    return 1.0 / (1.0 + np.exp(-z))


def score_histogram(scores: Sequence[float], labels: Sequence[bool]) -> dict:
    """Counts of the scores (P(suspicious)) per logit bin, for laundering and for clean cases: what a bank shares."""
    if len(scores) != len(labels):
        raise CalibrationError(f"{len(scores)} scores for {len(labels)} labels")
    z = np.clip(_logit(scores), -LOGIT_RANGE, LOGIT_RANGE)
    idx = np.minimum(((z + LOGIT_RANGE) / (2 * LOGIT_RANGE) * BINS).astype(int), BINS - 1)
    y = np.asarray(labels, dtype=bool)
    return {"bins": BINS, "range": LOGIT_RANGE, "positive": np.bincount(idx[y], minlength=BINS).tolist(),
            "negative": np.bincount(idx[~y], minlength=BINS).tolist()}


@dataclass(frozen=True)
class Calibration:
    a: float  # calibrated P = sigmoid(a * logit(P) + b)
    b: float
    threshold: float  # calibrated P at which a case is flagged (best F1 on the validation cases)
    validation_f1: float
    n_positive: int
    n_negative: int

    def probability(self, p):
        """The calibrated probability of raw score(s) p (a float for a float, an array for an array)."""
        out = _sigmoid(self.a * _logit(p) + self.b)
        return float(out) if np.ndim(out) == 0 else out

    def flags(self, p) -> np.ndarray:
        return np.asarray(self.probability(np.asarray(p, dtype=np.float64))) >= self.threshold

    @classmethod
    def fit(cls, histograms: Sequence[dict], iterations: int = 100) -> "Calibration":
        """Platt scaling by Newton's method on the summed histograms (bin centres weighted by their counts, with
        Platt's smoothed targets), then the F1-best threshold among the bins' calibrated values."""
        if not histograms:
            raise CalibrationError("no validation histograms to fit a calibration on")
        shapes = {(h["bins"], h["range"]) for h in histograms}
        if len(shapes) != 1:
            raise CalibrationError(f"histograms with different binning {sorted(shapes)}: every bank must use the "
                                   "same score_histogram")
        pos = np.sum([h["positive"] for h in histograms], axis=0).astype(np.float64)
        neg = np.sum([h["negative"] for h in histograms], axis=0).astype(np.float64)
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        if n_pos == 0 or n_neg == 0:
            raise CalibrationError(f"validation cases hold {n_pos} laundering and {n_neg} clean ones: a calibration "
                                   "needs both (more validation cases, or a bank that has seen laundering)")
        bins, rng = histograms[0]["bins"], histograms[0]["range"]
        centre = -rng + (np.arange(bins) + 0.5) * (2 * rng / bins)
        t_pos, t_neg = (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)  # Platt's targets (no 0/1 overfit)
        x = np.concatenate([centre, centre])
        w = np.concatenate([pos, neg])
        t = np.concatenate([np.full(bins, t_pos), np.full(bins, t_neg)])
        keep = w > 0
        x, w, t = x[keep], w[keep], t[keep]
        def loss(a: float, b: float) -> float:  # weighted cross-entropy against the targets, computed stably
            z = a * x + b
            return float(np.sum(w * (np.logaddexp(0, z) - t * z)))

        a, b = 1.0, 0.0
        f = loss(a, b)
        for _ in range(iterations):  # Newton's method with step halving: the loss never rises
            q = _sigmoid(a * x + b)
            g = np.array([np.sum(w * (q - t) * x), np.sum(w * (q - t))])
            s = w * q * (1 - q) + 1e-9
            h = np.array([[np.sum(s * x * x), np.sum(s * x)], [np.sum(s * x), np.sum(s)]]) + 1e-9 * np.eye(2)
            step = np.linalg.solve(h, g)
            for _ in range(40):
                if (f_new := loss(a - step[0], b - step[1])) <= f:
                    break
                step = step / 2
            else:
                break
            a, b, f = a - step[0], b - step[1], f_new
            if np.abs(step).max() < 1e-10:
                break
        cal = _sigmoid(a * centre + b)
        order = np.argsort(-cal, kind="stable")  # flag from the most to the least suspicious bin
        tp, fp = np.cumsum(pos[order]), np.cumsum(neg[order])
        f1 = 2 * tp / np.maximum(tp + fp + n_pos, 1)
        best = int(np.argmax(f1))
        return cls(float(a), float(b), float(cal[order][best]), float(f1[best]), n_pos, n_neg)

    def save(self, folder: Path) -> Path:
        from ..report import write_text_atomic

        path = Path(folder) / FILE
        write_text_atomic(path, json.dumps(asdict(self), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> "Calibration | None":
        """The calibration saved beside an adapter, or None when there is none."""
        path = Path(folder) / FILE
        if not path.exists():
            return None
        try:
            obj = json.loads(path.read_text())
            cal = cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as err:
            raise CalibrationError(f"{path}: not a calibration ({type(err).__name__}: {err}); delete it or refit "
                                   "with benchmarks/aml.py") from None
        if not (math.isfinite(cal.a) and math.isfinite(cal.b) and 0 < cal.threshold < 1):
            raise CalibrationError(f"{path}: a={cal.a}, b={cal.b}, threshold={cal.threshold} are not a calibration")
        return cal
