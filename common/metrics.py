"""Evaluation metrics for sentiment, AML and audit runs, matching scikit-learn's conventions in plain numpy.
Also holds the answer parsers for generated text and a markdown table formatter for reports."""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "classification_report",
    "expected_calibration_error",
    "parse_fingpt_answer",
    "parse_sentiment_answer",
    "binary_report",
    "bootstrap_interval",
    "weighted_f1_from_indices",
    "format_markdown_table",
]

UNPARSED = "unparsed"

# Softmax outputs in float32 drift from 1 by more than float64 round-off.
_PROB_SUM_TOL = 1e-5


def _safe_div(num: float, den: float) -> float:
    # sklearn's zero_division=0: an undefined ratio counts as 0, not NaN.
    return float(num) / float(den) if den else 0.0


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    labels: Sequence[str],
    probs: np.ndarray | None = None,
) -> dict:
    """Multi-class scores over ``labels``, with unparsed (None) predictions kept visible.

    A None prediction is always wrong: it is a false negative for its true class and a
    false positive for no class, exactly as scikit-learn treats a sentinel predicted label
    that is left out of ``labels``. All averages (macro, micro, weighted) run over ``labels``
    only, with zero_division=0, so labels never seen in y_true still count in macro-F1.

    ``probs`` (n x len(labels), columns in ``labels`` order) adds ``ece`` and ``nll``; it is
    scored on its own argmax, independently of ``y_pred`` (which may come from generation).
    """
    labels = list(labels)
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels contain duplicates: {labels}")
    y_true = list(y_true)
    y_pred = list(y_pred)
    if not y_true:
        raise ValueError("y_true is empty")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")

    index = {lab: i for i, lab in enumerate(labels)}
    k = len(labels)
    for t in y_true:
        if t not in index:
            raise ValueError(f"unknown true label {t!r}; expected one of {labels}")
    for p in y_pred:
        # A stray string is a parser bug, not a model error; it must not be silently absorbed.
        if p is not None and p not in index:
            raise ValueError(f"unknown predicted label {p!r}; use None for unparseable answers")

    n = len(y_true)
    t_idx = np.fromiter((index[t] for t in y_true), dtype=np.int64, count=n)
    # Unparsed predictions go to column k, outside every label's column.
    p_idx = np.fromiter((k if p is None else index[p] for p in y_pred), dtype=np.int64, count=n)
    cm = np.zeros((k, k + 1), dtype=np.int64)
    np.add.at(cm, (t_idx, p_idx), 1)
    n_unparsed = int(cm[:, k].sum())

    tp = np.diag(cm[:, :k]).astype(np.int64)
    support = cm.sum(axis=1)
    pred_count = cm[:, :k].sum(axis=0)

    per_class: dict[str, dict[str, Any]] = {}
    f1s = np.zeros(k)
    for i, lab in enumerate(labels):
        fp = int(pred_count[i] - tp[i])
        fn = int(support[i] - tp[i])
        # 2tp/(2tp+fp+fn) is sklearn's formula; it equals 2PR/(P+R) without the extra rounding.
        f1 = _safe_div(2 * tp[i], 2 * tp[i] + fp + fn)
        f1s[i] = f1
        per_class[lab] = {
            "precision": _safe_div(tp[i], pred_count[i]),
            "recall": _safe_div(tp[i], support[i]),
            "f1": f1,
            "support": int(support[i]),
        }

    tp_sum = int(tp.sum())
    report: dict[str, Any] = {
        "n": n,
        "accuracy": tp_sum / n,
        "macro_f1": float(f1s.mean()),
        # Micro over labels: unparsed answers add to the true count but not to the predicted count.
        "micro_f1": _safe_div(2 * tp_sum, int(pred_count.sum()) + int(support.sum())),
        "weighted_f1": _safe_div(float((f1s * support).sum()), int(support.sum())),
        "per_class": per_class,
        "confusion": (cm if n_unparsed else cm[:, :k]).tolist(),
        "confusion_columns": labels + [UNPARSED] if n_unparsed else list(labels),
        "labels": list(labels),
        "unparsed": n_unparsed,
        "unparsed_share": n_unparsed / n,
    }

    if probs is not None:
        p = _check_probs(probs, n, k)
        conf = p.max(axis=1)
        correct = p.argmax(axis=1) == t_idx
        report["ece"] = expected_calibration_error(conf, correct)
        # Clip like sklearn's log_loss so one zero probability does not make the mean infinite.
        eps = np.finfo(np.float64).eps
        p_true = np.clip(p[np.arange(n), t_idx], eps, 1.0)
        report["nll"] = float(-np.log(p_true).mean())
    return report


def weighted_f1_from_indices(t_idx: np.ndarray, p_idx: np.ndarray, k: int) -> np.ndarray:
    """Weighted F1 of many resamples at once: t_idx and p_idx of shape (resamples, n) hold class indices (a p_idx
    of k or more is an unparsed answer, wrong for every class); one value per resample, as `classification_report`."""
    t_idx, p_idx = np.atleast_2d(t_idx), np.atleast_2d(p_idx)
    f1 = np.zeros(t_idx.shape[0])
    n = t_idx.shape[1]
    for c in range(k):
        tc, pc = t_idx == c, p_idx == c
        tp = (tc & pc).sum(1)
        den = tc.sum(1) + pc.sum(1)
        f1 += np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0) * tc.sum(1) / n
    return f1


def bootstrap_interval(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str], *,
                       resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the weighted F1 (rows resampled with replacement, seeded)."""
    index = {lab: i for i, lab in enumerate(labels)}
    t = np.array([index[x] for x in y_true])
    p = np.array([len(labels) if x is None else index[x] for x in y_pred])
    rows = np.random.default_rng(seed).integers(0, len(t), size=(resamples, len(t)))
    vals = weighted_f1_from_indices(t[rows], p[rows], len(labels))
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _check_probs(probs: Any, n: int, k: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (n, k):
        raise ValueError(f"probs has shape {p.shape}, expected ({n}, {k})")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, rtol=0.0, atol=_PROB_SUM_TOL):
        raise ValueError("each row of probs must sum to 1")
    return p


def expected_calibration_error(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    n_bins: int = 10,
) -> float:
    """ECE over ``n_bins`` equal-width bins: sum_b |B|/n * |accuracy(B) - mean confidence(B)|.

    Bins are right-closed, (lo, hi], as in Guo et al. (2017); a confidence of exactly 0 goes
    to the first bin.
    """
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    if conf.size == 0:
        raise ValueError("confidences is empty")
    if conf.shape != corr.shape:
        raise ValueError(f"confidences has {conf.size} items but correct has {corr.size}")
    if int(n_bins) < 1:
        raise ValueError("n_bins must be at least 1")
    if not np.all(np.isfinite(conf)) or np.any(conf < 0) or np.any(conf > 1):
        raise ValueError("confidences must lie in [0, 1]")
    n_bins = int(n_bins)
    # Same edges and edge side as sklearn's calibration_curve, so reliability diagrams drawn
    # with it bin exactly the same samples as this number.
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(bins, weights=corr, minlength=n_bins)
    # |sum(correct) - sum(conf)| / n equals |B|/n * |acc(B) - conf(B)| and needs no empty-bin guard.
    return float(np.abs(corr_sum - conf_sum)[count > 0].sum() / conf.size)


def parse_fingpt_answer(text: str) -> str:
    """FinGPT's own sentiment parser, kept verbatim so our numbers compare with its paper.

    FinGPT takes ``text.split("Answer: ")[1]`` and then: "positive"/"Positive" anywhere ->
    positive, else "negative"/"Negative" -> negative, else neutral. Garbage therefore scores as
    neutral, which inflates accuracy on neutral-heavy sets such as FPB; use
    ``parse_sentiment_answer`` for our own numbers. Where FinGPT would crash (no "Answer: "),
    the whole text is parsed.

    Two parsers exist because the benchmark comparison needs FinGPT's rule, quirks included,
    while our own reporting needs to know how often the model produced no usable answer.
    """
    parts = text.split("Answer: ")
    x = parts[1] if len(parts) > 1 else text
    if "positive" in x or "Positive" in x:
        return "positive"
    if "negative" in x or "Negative" in x:
        return "negative"
    return "neutral"


def parse_sentiment_answer(
    text: str, labels: Sequence[str] = ("negative", "neutral", "positive")
) -> str | None:
    """Strict parser: the one label named as a whole word in the answer, else None.

    The text is stripped and lowercased, and only what follows the last "Answer:" is read
    (a model that echoes the prompt repeats the label list before it). The answer counts only
    if exactly one distinct label appears as a word; none or several give None, which
    ``classification_report`` counts as unparsed rather than guessing neutral as FinGPT does
    (see ``parse_fingpt_answer``, which is kept for comparability with its published numbers).
    """
    if text is None:
        return None
    x = text.strip().lower()
    marker = "answer:"
    pos = x.rfind(marker)
    if pos >= 0:
        x = x[pos + len(marker):]
    found = [
        lab for lab in labels
        if re.search(r"\b" + re.escape(lab.lower()) + r"\b", x)
    ]
    return found[0] if len(found) == 1 else None


def binary_report(
    y_true: Sequence[int], scores: Sequence[float], threshold: float = 0.5
) -> dict:
    """Thresholded and ranking scores for a binary task (1 = positive, e.g. suspicious or member).

    precision/recall/f1 use ``scores >= threshold`` with zero_division=0. pr_auc is average
    precision (step-wise, no interpolation) and roc_auc gives tied scores half credit, both as
    in scikit-learn. Where y_true holds a single class the ranking scores are undefined and are
    returned as None (not NaN, which JSON cannot carry).
    """
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.size == 0:
        raise ValueError("y_true is empty")
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} items but scores has {s.size}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError(f"y_true must hold only 0 and 1, got {sorted(set(y.tolist()))}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    y = y.astype(np.int64)

    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    n_pred = int(pred.sum())
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    report: dict[str, Any] = {
        "n": int(y.size),
        "n_positive": n_pos,
        "precision": _safe_div(tp, n_pred),
        "recall": _safe_div(tp, n_pos),
        "f1": _safe_div(2 * tp, n_pred + n_pos),
        "pr_auc": None,
        "roc_auc": None,
        "alert_rate": n_pred / y.size,
    }
    if n_pos and n_neg:
        report["pr_auc"] = _average_precision(y, s)
        report["roc_auc"] = _roc_auc(y, s)
    return report


def aml_report(
    truth_typology: Sequence[str], scores: Sequence[float], predicted_typology: Sequence[str | None],
    threshold: float = 0.5, none_label: str = "none",
) -> dict:
    """AML screening: binary_report on suspicious (truth = typology other than none), recall per typology (the
    share of that typology's cases flagged), typology accuracy on the flagged true positives, and the count of
    unparseable answers (predicted_typology None)."""
    y = [int(t != none_label) for t in truth_typology]
    report = binary_report(y, scores, threshold)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    per_typ: dict[str, dict] = {}
    for typ in sorted({t for t in truth_typology if t != none_label}):
        idx = [i for i, t in enumerate(truth_typology) if t == typ]
        per_typ[typ] = {"n": len(idx), "recall": _safe_div(int(sum(flagged[i] for i in idx)), len(idx))}
    tp = [i for i, t in enumerate(truth_typology) if t != none_label and flagged[i]]
    report["recall_by_typology"] = per_typ
    report["typology_accuracy"] = (_safe_div(sum(predicted_typology[i] == truth_typology[i] for i in tp), len(tp))
                                   if tp else None)
    report["unparseable"] = sum(p is None for p in predicted_typology)
    return report


def binary_intervals(y_true: Sequence[int], scores: Sequence[float], threshold: float = 0.5, *,
                     resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals (cases resampled with replacement, seeded) of precision, recall, F1 at
    `threshold` and of PR-AUC; a resample with one class only counts as 0 for PR-AUC."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    rows = np.random.default_rng(seed).integers(0, y.size, size=(resamples, y.size))
    yy, pred = y[rows], s[rows] >= threshold
    tp = np.sum(pred & (yy == 1), axis=1)
    n_pred, n_pos = pred.sum(axis=1), yy.sum(axis=1)
    prec = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
    rec = np.where(n_pos > 0, tp / np.maximum(n_pos, 1), 0.0)
    f1 = np.where(n_pred + n_pos > 0, 2 * tp / np.maximum(n_pred + n_pos, 1), 0.0)
    ap = np.array([_average_precision(yy[i], s[r]) if 0 < n_pos[i] < y.size else 0.0 for i, r in enumerate(rows)])
    q = [(1 - level) / 2, (1 + level) / 2]
    return {name: tuple(float(x) for x in np.quantile(v, q))
            for name, v in (("precision", prec), ("recall", rec), ("f1", f1), ("pr_auc", ap))}


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # A tied group is one threshold: only its last position is an operating point.
    last_of_group = np.r_[np.diff(s_sorted) != 0, True]
    tps = np.cumsum(y_sorted)[last_of_group]
    predicted = (np.arange(y.size) + 1)[last_of_group]
    precision = tps / predicted
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    # Mann-Whitney U with average ranks equals the trapezoidal ROC area sklearn computes.
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    # A literal pipe would split the cell and break the table's shape.
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown_table(rows: list[Mapping[str, Any]], columns: list[str] | None = None) -> str:
    """GitHub markdown table of ``rows``; columns default to every key, in first-seen order.

    Floats show 3 decimals; a key missing from a row, or a None value, shows as "-".
    """
    if columns is None:
        columns = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
    if not columns:
        raise ValueError("no columns to tabulate")
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)
