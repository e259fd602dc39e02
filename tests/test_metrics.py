"""Checks fedfingpt.common.metrics against scikit-learn and hand-computed values."""

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from fedfingpt.common.metrics import (
    binary_report,
    classification_report,
    expected_calibration_error,
    format_markdown_table,
    parse_fingpt_answer,
    parse_sentiment_answer,
)

TOL = 1e-9
SENTIMENT = ["negative", "neutral", "positive"]
# sklearn has no "None" prediction; an extra label left out of `labels` behaves the same way.
SENTINEL = "__unparsed__"


def _random_case(seed, n, labels, none_rate=0.0, absent_pred=None, absent_true=None):
    rng = np.random.default_rng(seed)
    true_pool = [lab for lab in labels if lab != absent_true]
    pred_pool = [lab for lab in labels if lab != absent_pred]
    y_true = [str(x) for x in rng.choice(true_pool, size=n)]
    y_pred = [str(x) for x in rng.choice(pred_pool, size=n)]
    # Agreement well above chance so per-class scores are not all near zero.
    for i in range(n):
        if rng.random() < 0.4 and y_true[i] in pred_pool:
            y_pred[i] = y_true[i]
    y_pred = [None if rng.random() < none_rate else p for p in y_pred]
    return y_true, y_pred


CASES = [
    # (seed, n, labels, none_rate, absent_pred, absent_true)
    (0, 200, SENTIMENT, 0.0, None, None),
    (1, 57, SENTIMENT, 0.15, None, None),
    (2, 120, SENTIMENT, 0.1, "neutral", None),
    (3, 40, SENTIMENT, 0.0, "positive", "negative"),
    (4, 300, ["a", "b", "c", "d", "e"], 0.3, "c", None),
    (5, 9, ["suspicious", "clean"], 0.2, None, None),
    (6, 25, ["x", "y", "z", "w"], 0.05, None, "w"),
]


@pytest.mark.parametrize("seed,n,labels,none_rate,absent_pred,absent_true", CASES)
def test_classification_report_matches_sklearn(seed, n, labels, none_rate, absent_pred, absent_true):
    y_true, y_pred = _random_case(seed, n, labels, none_rate, absent_pred, absent_true)
    y_sk = [SENTINEL if p is None else p for p in y_pred]
    rep = classification_report(y_true, y_pred, labels)

    assert rep["n"] == n
    assert rep["labels"] == labels
    assert rep["accuracy"] == pytest.approx(accuracy_score(y_true, y_sk), abs=TOL)
    for avg in ("macro", "micro", "weighted"):
        expected = f1_score(y_true, y_sk, labels=labels, average=avg, zero_division=0)
        assert rep[f"{avg}_f1"] == pytest.approx(expected, abs=TOL), avg

    p, r, f, s = precision_recall_fscore_support(
        y_true, y_sk, labels=labels, average=None, zero_division=0
    )
    for i, lab in enumerate(labels):
        pc = rep["per_class"][lab]
        assert pc["precision"] == pytest.approx(p[i], abs=TOL)
        assert pc["recall"] == pytest.approx(r[i], abs=TOL)
        assert pc["f1"] == pytest.approx(f[i], abs=TOL)
        assert pc["support"] == s[i]

    n_none = sum(q is None for q in y_pred)
    assert rep["unparsed"] == n_none
    assert rep["unparsed_share"] == pytest.approx(n_none / n, abs=TOL)
    cm = confusion_matrix(y_true, y_sk, labels=labels + [SENTINEL])[: len(labels)]
    if n_none == 0:
        cm = cm[:, : len(labels)]
    assert rep["confusion"] == cm.tolist()
    json.dumps(rep)


def test_cases_exercise_the_edge_conditions():
    # Guards the parametrised cases above against silently losing what they are meant to cover.
    with_none = absent = 0
    for seed, n, labels, none_rate, absent_pred, absent_true in CASES:
        y_true, y_pred = _random_case(seed, n, labels, none_rate, absent_pred, absent_true)
        with_none += any(p is None for p in y_pred)
        absent += absent_pred is not None and absent_pred not in y_pred
    assert with_none >= 4 and absent >= 3


def test_none_prediction_is_a_false_negative_only():
    rep = classification_report(
        ["positive", "positive", "negative"], ["positive", None, "negative"], SENTIMENT
    )
    pos = rep["per_class"]["positive"]
    assert pos["precision"] == 1.0 and pos["recall"] == 0.5
    assert rep["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rep["accuracy"] == pytest.approx(2 / 3)
    assert rep["micro_f1"] == pytest.approx(2 * 2 / (2 + 3))
    assert rep["confusion"] == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]]
    assert rep["unparsed"] == 1 and rep["unparsed_share"] == pytest.approx(1 / 3)


def test_probs_give_ece_and_nll():
    rng = np.random.default_rng(11)
    n, k = 80, 3
    y_true = [SENTIMENT[i] for i in rng.integers(0, k, size=n)]
    logits = rng.normal(size=(n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    rep = classification_report(y_true, y_true, SENTIMENT, probs=probs)

    assert rep["nll"] == pytest.approx(log_loss(y_true, probs, labels=SENTIMENT), abs=TOL)
    t_idx = np.array([SENTIMENT.index(t) for t in y_true])
    correct = probs.argmax(axis=1) == t_idx
    # Reference ECE written as the textbook loop, independently of the vectorised code.
    conf = probs.max(axis=1)
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    assert rep["ece"] == pytest.approx(ece, abs=TOL)
    assert "ece" not in classification_report(y_true, y_true, SENTIMENT)


def test_nll_stays_finite_on_zero_probability():
    probs = np.array([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5]])
    rep = classification_report(["neutral", "positive"], ["negative", "positive"], SENTIMENT, probs=probs)
    expected = (-np.log(np.finfo(np.float64).eps) - np.log(0.5)) / 2
    assert rep["nll"] == pytest.approx(expected, abs=TOL)


def test_ece_hand_computed():
    conf = [0.95, 0.85, 0.62, 0.68, 0.15]
    correct = [1, 0, 1, 1, 0]
    # bins (0.9,1]: |1-.95|; (0.8,.9]: |0-.85|; (0.6,.7]: 2 items, |1-.65|; (0.1,.2]: |0-.15|
    expected = (0.05 + 0.85 + 2 * 0.35 + 0.15) / 5
    assert expected_calibration_error(conf, correct) == pytest.approx(expected, abs=TOL)
    # One bin reduces ECE to |accuracy - mean confidence|.
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(
        abs(3 / 5 - np.mean(conf)), abs=TOL
    )
    assert expected_calibration_error([0.9, 0.9], [1, 1]) == pytest.approx(0.1, abs=TOL)


def test_ece_bins_are_right_closed():
    # 0.3 belongs to (0.2, 0.3]; put in (0.3, 0.4] with 0.35 the answer would be 0.175.
    assert expected_calibration_error([0.3, 0.35], [1, 0]) == pytest.approx(
        (0.7 + 0.35) / 2, abs=TOL
    )
    # 0.5 is an exact bin edge in floating point, so this pins the side the edge falls on.
    assert expected_calibration_error([0.5, 0.55], [1, 0]) == pytest.approx(
        (0.5 + 0.55) / 2, abs=TOL
    )
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == pytest.approx(0.0, abs=TOL)


def test_ece_bins_like_sklearn_calibration_curve():
    rng = np.random.default_rng(5)
    conf = np.round(rng.random(500), 1)  # many values sit exactly on bin edges
    correct = rng.random(500) < conf
    frac_pos, mean_conf = calibration_curve(correct, conf, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], conf), minlength=10)
    expected = np.sum(counts[counts > 0] / conf.size * np.abs(frac_pos - mean_conf))
    assert expected_calibration_error(conf, correct) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1) positive", "positive"),
        ("Negative outlook", "negative"),
        ("xyz", "neutral"),
        ("", "neutral"),
        # The positive check runs first, so a hedged answer counts as positive.
        ("not positive but negative", "positive"),
        # Only the text after the first "Answer: " is read, up to any second one.
        ("Input: positive news\nAnswer: negative", "negative"),
        ("Answer: neutral\nAnswer: positive", "neutral"),
        ("NEGATIVE", "neutral"),
        ("POSITIVE", "neutral"),
    ],
)
def test_fingpt_parser_quirks(text, expected):
    assert parse_fingpt_answer(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        (" positive", "positive"),
        ("positive or negative", None),
        ("Answer: Neutral.", "neutral"),
        ("", None),
        ("xyz", None),
        ("NEGATIVE", "negative"),
        ("positively", None),
        ("positive, definitely positive", "positive"),
        ("Options: negative/neutral/positive\nAnswer: negative", "negative"),
        ("Answer: positive\nAnswer: none of these", None),
    ],
)
def test_strict_parser(text, expected):
    assert parse_sentiment_answer(text) == expected


def test_strict_parser_custom_labels():
    assert parse_sentiment_answer("Answer: Suspicious", ("clean", "suspicious")) == "suspicious"
    assert parse_sentiment_answer("Answer: positive", ("clean", "suspicious")) is None


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_binary_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
    y[0], y[1] = 0, 1
    scores = np.clip(rng.normal(0.3 + 0.3 * y, 0.25), 0, 1)
    if seed % 2 == 0:
        scores = np.round(scores, 1)  # many ties
    thr = [0.5, 0.3, 0.7, 0.45][seed]
    rep = binary_report(y.tolist(), scores.tolist(), threshold=thr)

    pred = (scores >= thr).astype(int)
    p, r, f, _ = precision_recall_fscore_support(
        y, pred, average="binary", zero_division=0
    )
    assert rep["precision"] == pytest.approx(p, abs=TOL)
    assert rep["recall"] == pytest.approx(r, abs=TOL)
    assert rep["f1"] == pytest.approx(f, abs=TOL)
    assert rep["pr_auc"] == pytest.approx(average_precision_score(y, scores), abs=TOL)
    assert rep["roc_auc"] == pytest.approx(roc_auc_score(y, scores), abs=TOL)
    assert rep["alert_rate"] == pytest.approx(pred.mean(), abs=TOL)
    assert rep["n"] == n and rep["n_positive"] == int(y.sum())
    json.dumps(rep)


def test_binary_report_hand_example():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    rep = binary_report(y, s, threshold=0.4)
    assert rep["roc_auc"] == pytest.approx(0.75)
    assert rep["pr_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert rep["alert_rate"] == 0.5 and rep["precision"] == 0.5 and rep["recall"] == 0.5
    tied = binary_report([0, 1], [0.5, 0.5])
    assert tied["roc_auc"] == pytest.approx(0.5) and tied["pr_auc"] == pytest.approx(0.5)


def test_binary_report_single_class_has_no_ranking_scores():
    rep = binary_report([0, 0, 0], [0.2, 0.9, 0.1])
    assert rep["roc_auc"] is None and rep["pr_auc"] is None
    assert rep["precision"] == 0.0 and rep["recall"] == 0.0 and rep["alert_rate"] == pytest.approx(1 / 3)


def test_markdown_table():
    rows = [
        {"model": "fed", "acc": 0.81234, "n": 10},
        {"model": "a|b", "f1": 0.5},
    ]
    out = format_markdown_table(rows)
    lines = out.split("\n")
    assert len(lines) == 4
    assert lines[0] == "| model | acc | n | f1 |"
    assert lines[1] == "| --- | --- | --- | --- |"
    assert lines[2] == "| fed | 0.812 | 10 | - |"
    assert lines[3] == "| a\\|b | - | - | 0.500 |"
    assert format_markdown_table(rows, columns=["f1", "model"]).split("\n")[2] == "| - | fed |"
    assert format_markdown_table([{"x": None, "y": np.float32(0.25)}]).split("\n")[2] == "| - | 0.250 |"


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [], SENTIMENT)
    with pytest.raises(ValueError, match="bullish"):
        classification_report(["positive", "bullish"], ["positive", "neutral"], SENTIMENT)
    with pytest.raises(ValueError, match="maybe"):
        classification_report(["positive"], ["maybe"], SENTIMENT)
    with pytest.raises(ValueError):
        classification_report(["positive"], ["positive", "neutral"], SENTIMENT)
    with pytest.raises(ValueError, match="duplicate"):
        classification_report(["positive"], ["positive"], ["positive", "positive"])
    with pytest.raises(ValueError, match="labels"):
        classification_report(["positive"], ["positive"], [])
    with pytest.raises(ValueError):
        classification_report(["positive"], ["positive"], SENTIMENT, probs=np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError):
        classification_report(["positive"], ["positive"], SENTIMENT, probs=np.array([[0.5, 0.4, 0.4]]))
    with pytest.raises(ValueError):
        expected_calibration_error([], [])
    with pytest.raises(ValueError):
        binary_report([], [])
    with pytest.raises(ValueError):
        binary_report([0, 2], [0.1, 0.2])


def test_bootstrap_interval_brackets_the_weighted_f1_and_narrows_with_more_rows():
    from fedfingpt.common.metrics import bootstrap_interval, weighted_f1_from_indices

    rng = np.random.default_rng(3)
    labels = ["negative", "neutral", "positive"]
    widths = []
    for n in (100, 2000):
        truth = list(rng.choice(labels, n))
        pred = [t if rng.random() < 0.7 else (None if rng.random() < 0.1 else str(rng.choice(labels))) for t in truth]
        point = classification_report(truth, pred, labels)["weighted_f1"]
        idx = {lab: i for i, lab in enumerate(labels)}
        vec = weighted_f1_from_indices(np.array([idx[t] for t in truth]),
                                       np.array([3 if p is None else idx[p] for p in pred]), 3)
        assert vec[0] == pytest.approx(point, abs=1e-12)  # the vectorised F1 is the report's
        lo, hi = bootstrap_interval(truth, pred, labels, seed=1)
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # about 1/sqrt(20)


def test_result_files_name_the_cpu_and_its_flags(tmp_path):
    import json

    from fedfingpt.common.report import write_results

    js, md = write_results(tmp_path / "r", benchmark="x", config={}, seed=0,
                           rows=[{"dataset": "fpb", "weighted_f1": 0.8, "weighted_f1_ci95": [0.78, 0.82]}])
    machine = json.loads(js.read_text())["machine"]
    assert machine["cpu_model"] and isinstance(machine["flags"], list) and "native_bf16" in machine
    assert "0.780-0.820" in md.read_text()
