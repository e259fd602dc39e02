"""Sentiment evaluation on the benchmark test sets: label-likelihood scoring and/or FinGPT's generate-and-parse.

Returns flat rows (one per data set and method) in the results format of benchmarks/ and `fedfingpt eval`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from .config import DataConfig, EvalConfig
from .metrics import bootstrap_interval, classification_report, parse_fingpt_answer, parse_sentiment_answer
from .predict import PrefixCache, generate, label_logprobs, softmax
from .prompt import build_prompt
from .tasks.sentiment import LABELS, content_free_prompt, sentiment_prompt
from .tasks.sentiment_data import SentimentExample


def task_openings() -> list[str]:
    """The fixed start of every prompt scored (each task's instruction before its input): evaluation and serving
    compute its keys and values once (`PrefixCache`) and run only each row's own tokens."""
    from .tasks.aml import INSTRUCTION
    from .tasks.sentiment import INSTRUCTIONS

    return [build_prompt(i, "") for i in (*INSTRUCTIONS.values(), INSTRUCTION)]


def scoring_cache(model, tokenizer, bf16) -> PrefixCache:
    """The instructions' keys and values for a model whose weights stay as they are while it is scored."""
    return PrefixCache(model, tokenizer, task_openings(), bf16=bf16)


def sample_rows(examples: Sequence[SentimentExample], limit: int | None, seed: int) -> list[SentimentExample]:
    """A seeded sample of `limit` rows (all rows when limit is None), so quick evaluations are comparable."""
    if limit is None or limit >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), limit)


def content_free_prior(model, tokenizer, cfg: EvalConfig, max_length: int) -> dict[str, np.ndarray]:
    """log P(label | content-free input) per instruction kind, for contextual calibration."""
    kinds = ["news", "tweet"]
    logp = label_logprobs(
        model, tokenizer, [content_free_prompt(k) for k in kinds], LABELS, max_length=max_length, bf16=cfg.bf16_autocast
    )
    return {k: logp[i] for i, k in enumerate(kinds)}


def _summary(dataset: str, method: str, report: dict, wall_s: float, ci: tuple[float, float]) -> dict:
    row = {
        "dataset": dataset,
        "method": method,
        "n": report["n"],
        "accuracy": report["accuracy"],
        "weighted_f1": report["weighted_f1"],
        "weighted_f1_ci95": [round(ci[0], 4), round(ci[1], 4)],
        "macro_f1": report["macro_f1"],
        "micro_f1": report["micro_f1"],
        "unparsed_share": report["unparsed_share"],
        "eval_s": round(wall_s, 2),
    }
    if "ece" in report:
        row["ece"] = report["ece"]
    for lab in LABELS:
        row[f"f1_{lab}"] = report["per_class"][lab]["f1"]
    row["confusion"] = report["confusion"]
    return row


def evaluate_sentiment(
    model,
    tokenizer,
    test_sets: dict[str, Sequence[SentimentExample]],
    cfg: EvalConfig,
    *,
    max_length: int = 256,
    progress: bool = True,
    keep_predictions: bool = False,
) -> list[dict]:
    """One row per set and method: weighted F1 with a bootstrap 95 % interval (1,000 resamples of the rows), macro
    and micro F1, accuracy, per-class F1, the confusion matrix, and, for label scoring, calibration (ECE). With
    `keep_predictions`, each row also holds `predictions`, the predicted label of every example in order (None
    where a generated answer did not parse): what paired comparisons between models resample.

    Label scoring runs each set in length-sorted batches, computes the instructions' keys and values once, and
    reads only the label words' rows of the output head: the probabilities are normalised over the labels, which
    leaves every prediction as the whole-vocabulary scores would make it."""
    rows: list[dict] = []
    prior = content_free_prior(model, tokenizer, cfg, max_length) if cfg.calibrate else None
    prefix = scoring_cache(model, tokenizer, cfg.bf16_autocast) if cfg.method in ("likelihood", "both") else None
    for name, examples in test_sets.items():
        prompts = [sentiment_prompt(ex) for ex in examples]
        truth = [ex.label for ex in examples]
        if cfg.method in ("likelihood", "both"):
            t0 = time.perf_counter()
            with tqdm(total=len(prompts), desc=f"score {name}", disable=not progress, leave=False, mininterval=2) as bar:
                logp = label_logprobs(
                    model, tokenizer, prompts, LABELS, max_length=max_length, batch_size=cfg.batch_size,
                    bf16=cfg.bf16_autocast, progress=bar, prefix=prefix, among_labels=True,
                )
            wall = time.perf_counter() - t0
            variants = [("likelihood", logp)]
            if prior is not None:  # the same scores with the content-free prior removed: both rows, one pass
                variants.append(("likelihood-calibrated", logp - np.stack([prior[ex.kind] for ex in examples])))
            for method, scores in variants:
                probs = softmax(scores)
                preds = [LABELS[i] for i in probs.argmax(1)]
                rows.append(_summary(name, method, classification_report(truth, preds, LABELS, probs=probs), wall,
                                     bootstrap_interval(truth, preds, LABELS)))
                if keep_predictions:
                    rows[-1]["predictions"] = preds
        if cfg.method in ("generate", "both"):
            t0 = time.perf_counter()
            with tqdm(total=len(prompts), desc=f"generate {name}", disable=not progress, leave=False, mininterval=2) as bar:
                outputs = generate(
                    model, tokenizer, prompts, max_new_tokens=cfg.max_new_tokens, max_length=max_length,
                    batch_size=cfg.batch_size, bf16=cfg.bf16_autocast, progress=bar,
                )
            strict = [parse_sentiment_answer(o) for o in outputs]
            report = classification_report(truth, strict, LABELS)
            row = _summary(name, "generate", report, time.perf_counter() - t0, bootstrap_interval(truth, strict, LABELS))
            # FinGPT's own parser counts anything unparseable as neutral; shown beside ours for comparison.
            fingpt = classification_report(truth, [parse_fingpt_answer(o) for o in outputs], LABELS)
            row["fingpt_parser_accuracy"] = fingpt["accuracy"]
            row["fingpt_parser_weighted_f1"] = fingpt["weighted_f1"]
            if keep_predictions:
                row["predictions"] = strict
            rows.append(row)
    return rows


def score_aml(model, tokenizer, cases: Sequence, cfg: EvalConfig, *, max_length: int, max_lines: int,
              threshold: float = 0.5, progress: bool = False, typology: bool = True) -> tuple[np.ndarray, list]:
    """P(suspicious) per case (the opening '{"suspicious": true' against '... false', by likelihood) and the typology
    read for the flagged ones (the most likely typology opening; 'none' below the threshold; None for every case
    when `typology` is off, which saves nine scored continuations per flagged case)."""
    from .tasks.aml import LABEL_OPENINGS, NONE, TYPOLOGIES, TYPOLOGY_OPENINGS, aml_prompt

    prompts = [aml_prompt(c, max_lines) for c in cases]
    prefix = scoring_cache(model, tokenizer, cfg.bf16_autocast)
    with tqdm(total=len(prompts), desc="score aml", disable=not progress, leave=False, mininterval=2) as bar:
        p = softmax(label_logprobs(model, tokenizer, prompts, LABEL_OPENINGS, max_length=max_length,
                                   batch_size=cfg.batch_size, bf16=cfg.bf16_autocast, progress=bar,
                                   prefix=prefix))[:, 0]
    if not typology:
        return p, [None] * len(cases)
    typ = [NONE] * len(cases)
    flagged = [i for i in range(len(cases)) if p[i] >= threshold]
    if flagged:
        logp = label_logprobs(model, tokenizer, [prompts[i] for i in flagged], TYPOLOGY_OPENINGS,
                              max_length=max_length, batch_size=max(1, cfg.batch_size // 4), bf16=cfg.bf16_autocast,
                              prefix=prefix)
        for i, t in zip(flagged, logp.argmax(1)):
            typ[i] = TYPOLOGIES[int(t)]
    return p, typ


def evaluate_aml(model, tokenizer, cases: Sequence, cfg: EvalConfig, *, max_length: int, max_lines: int,
                 threshold: float = 0.5, progress: bool = False, name: str = "aml", typology: bool = True) -> dict:
    """One results row for AML screening: precision, recall, F1, PR-AUC, alert rate, recall per typology and
    typology accuracy on the flagged laundering cases (common.metrics.aml_report)."""
    from .metrics import aml_report
    from .tasks.aml import NONE

    t0 = time.perf_counter()
    p, typ = score_aml(model, tokenizer, cases, cfg, max_length=max_length, max_lines=max_lines,
                       threshold=threshold, progress=progress, typology=typology)
    r = aml_report([c.typology for c in cases], p, typ if typology else [NONE] * len(cases), threshold=threshold)
    if not typology:
        r["typology_accuracy"] = r["unparseable"] = None
    return {"dataset": name, "method": "likelihood", "n": r["n"], "n_positive": r["n_positive"],
            "accuracy": float(np.mean((p >= threshold) == np.array([c.suspicious for c in cases]))),
            "precision": r["precision"], "recall": r["recall"], "f1": r["f1"], "pr_auc": r["pr_auc"],
            "roc_auc": r["roc_auc"], "alert_rate": r["alert_rate"], "typology_accuracy": r["typology_accuracy"],
            "recall_by_typology": r["recall_by_typology"], "eval_s": round(time.perf_counter() - t0, 2),
            "scores": [round(float(x), 5) for x in p]}


def fit_aml_calibration(model, tokenizer, val: Sequence[Sequence], cfg: EvalConfig, *, max_length: int,
                        max_lines: int):
    """The risk score's calibration from validation cases, one list per bank: each bank's scores become its
    histogram (what a bank would send) and the fit reads their sum (common/tasks/aml_calibration.py). Raises
    CalibrationError where the cases cannot give one."""
    from .tasks.aml_calibration import Calibration, score_histogram

    ecfg = cfg.model_copy(update={"method": "likelihood"})
    hists = []
    for cases in val:
        if cases:
            p, _ = score_aml(model, tokenizer, cases, ecfg, max_length=max_length, max_lines=max_lines, typology=False)
            hists.append(score_histogram(p, [c.suspicious for c in cases]))
    return Calibration.fit(hists)


def check_aml_reasons(model, tokenizer, cases: Sequence, cfg: EvalConfig, *, max_length: int, max_lines: int,
                      max_new_tokens: int = 96) -> dict:
    """Generate the model's reply to each case and check it: strict JSON (`parse_answer`) and a reason whose every
    clause is a fact of the case (`aml_features.reason_problems`). Returns the rates and the first problems found
    (clauses and parse errors only, never the case's names)."""
    from .predict import generate
    from .tasks.aml import AnswerError, aml_prompt, parse_answer
    from .tasks.aml_features import reason_problems

    t0 = time.perf_counter()
    replies = generate(model, tokenizer, [aml_prompt(c, max_lines) for c in cases], max_new_tokens=max_new_tokens,
                       max_length=max_length, batch_size=max(1, cfg.batch_size // 2), bf16=cfg.bf16_autocast)
    parsed = faithful = 0
    problems: list[str] = []
    for i, (c, text) in enumerate(zip(cases, replies)):  # cases by their place: an id may hold an account number
        try:
            answer = parse_answer(text)
        except AnswerError as err:
            problems.append(f"case {i}: unparseable ({err})")
            continue
        parsed += 1
        wrong = reason_problems(c, answer.reason)
        faithful += not wrong
        problems.extend(f"case {i}: {w}" for w in wrong)
    n = len(cases)
    return {"n": n, "parsed_rate": parsed / n if n else None, "faithful_rate": faithful / n if n else None,
            "faithful_of_parsed": faithful / parsed if parsed else None, "problems": problems[:20],
            "eval_s": round(time.perf_counter() - t0, 1)}


def evaluate_tasks(model, tokenizer, data: DataConfig, sentiment_sets: dict, aml_cases: Sequence, cfg: EvalConfig, *,
                   progress: bool = False) -> list[dict]:
    """Rows for the sentiment test sets and, when given, the held-out AML cases (its per-case scores left out):
    what the server scores every round and what `fedfingpt train` / `eval` report."""
    rows = evaluate_sentiment(model, tokenizer, sentiment_sets, cfg, max_length=data.max_length, progress=progress)
    if aml_cases:
        row = evaluate_aml(model, tokenizer, aml_cases, cfg, max_length=data.max_length, max_lines=data.aml.max_lines,
                           threshold=data.aml.threshold, progress=progress)
        rows.append({k: v for k, v in row.items() if k != "scores"})
    return rows
