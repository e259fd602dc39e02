"""Jobs behind the commands: prepare a model, train centralized LoRA, evaluate zero-shot or with an adapter.

Each job wires the shared pieces (config, models, data, the one training loop, evaluation) and writes a report.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .common.train import train
from .common.adapter import load_adapter, save_adapter
from .common.config import Config
from .common.evaluate import evaluate_tasks, sample_rows
from .common.models import attach_lora, load_base_model
from .common.report import peak_rss_mb, save_figure, write_results, write_text_atomic
from .common.tasks.sentiment import encode_sentiment
from .common.tasks.sentiment_data import sentiment_splits, training_mix

log = logging.getLogger("fedfingpt")

SUMMARY_COLUMNS = ["dataset", "method", "n", "accuracy", "weighted_f1", "weighted_f1_ci95", "macro_f1", "ece", "unparsed_share", "f1",
                   "pr_auc", "recall"]  # the last three: AML screening


def run_dir(cfg: Config, out: str | Path | None, kind: str) -> Path:
    d = Path(out) if out else Path(cfg.output_dir) / f"{cfg.name}-{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def load_test_sets(cfg: Config, splits: dict | None = None, limit: int | None = None) -> dict:
    splits = splits or sentiment_splits(cfg.data.data_dir)
    return {name: sample_rows(splits["test"][name], limit, cfg.data.seed) for name in cfg.data.eval_sets}


def plot_training(result, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps, losses = zip(*result.losses) if result.losses else ((), ())
    ax1.plot(steps, losses, marker="o", ms=3)
    ax1.set(xlabel="optimizer step", ylabel="answer-token loss", title="training loss")
    if result.evals:
        ax1b = ax1.twinx()
        for name in result.evals[0][1]:
            ax1b.plot([s for s, _ in result.evals], [e[name] for _, e in result.evals], "--", label=f"{name} wF1")
        ax1b.set_ylabel("weighted F1 (periodic eval)")
        ax1b.legend(loc="lower left", fontsize=8)
    names = [f"{r['dataset']}" for r in rows]
    scores = [r.get("weighted_f1", r.get("f1")) for r in rows]  # AML: F1 of the suspicious class
    ax2.bar(names, scores, color="#3b7dd8")
    ax2.set(ylim=(0, 1), ylabel="weighted F1 (AML: F1)", title="final evaluation")
    for i, v in enumerate(scores):
        ax2.text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def run_train(cfg: Config, out: str | Path | None = None, progress: bool = True) -> dict:
    """Centralized LoRA on FinGPT's training mix, then evaluation on the benchmark test sets."""
    out_dir = run_dir(cfg, out, "train")
    t_start = time.perf_counter()
    sentiment = "sentiment" in cfg.data.tasks
    splits = sentiment_splits(cfg.data.data_dir) if sentiment else None
    t = cfg.training
    loaded = load_base_model(cfg.model)
    model = attach_lora(loaded.model, cfg.lora, seed=cfg.training.seed)
    tok = loaded.tokenizer
    encoded: list = []
    if sentiment:
        mix = training_mix(splits["train"], dict(cfg.data.train_mix), seed=cfg.data.seed)
        needed = (t.max_steps or 0) * t.batch_size * t.grad_accum
        rows_used = mix[:needed] if t.max_steps and needed < len(mix) else mix  # shuffled: a prefix is a sample
        encoded = encode_sentiment(tok, rows_used, cfg.data.max_length)
        log.info("sentiment: %d examples of %d in the mix", len(encoded), len(mix))
    aml_test, aml_val = [], []
    if "aml" in cfg.data.tasks:  # centralized AML: every bank's training cases pooled (the federation's ceiling)
        from .common.bank_rows import aml_examples
        from .common.tasks.aml_scenario import aml_split, held_out_sample

        split = aml_split(cfg.data, cfg.federation.num_banks)
        cases = [c for bank in split.train for c in bank]
        aml = aml_examples(cfg, tok, cases, len(encoded), cfg.data.seed)
        log.info("AML: %d cases of %d banks (%s) as %d examples", len(cases), len(split.banks), split.source, len(aml))
        encoded = encoded + aml
        aml_test = held_out_sample(cfg.data, cfg.federation.num_banks)
        aml_val = split.val  # per bank (data.aml.val_share): the risk score's calibration
    log.info("training on %d examples (%s); %s", len(encoded), "+".join(cfg.data.tasks), out_dir)

    quick_sets = ({k: v for k, v in load_test_sets(cfg, splits, t.eval_limit).items() if k in ("fpb", "tfns")}
                  if sentiment else {})

    def periodic_eval(step: int) -> dict:
        rows = evaluate_tasks(model, tok, cfg.data, quick_sets, aml_test,
                              cfg.eval.model_copy(update={"method": "likelihood", "calibrate": False}))
        scores = {r["dataset"]: r.get("weighted_f1", r.get("f1")) for r in rows}
        log.info("step %d: periodic eval weighted F1 %s", step, {k: round(v, 3) for k, v in scores.items()})
        return scores

    result = train(
        model, encoded, t, pad_id=tok.pad_token_id, eval_fn=periodic_eval if t.eval_every else None,
        on_log=lambda s, l: log.info("step %d loss %.4f", s, l), progress=progress,
    )
    train_info = {
        "steps": result.steps, "examples": result.examples, "tokens": result.tokens,
        "train_s": round(result.wall_s, 1), "tokens_per_s": round(result.tokens_per_s, 1),
        "final_loss": result.final_loss,
    }
    adapter_dir = save_adapter(
        model, out_dir / "adapter", base_id=loaded.base_id, base_sha256=loaded.base_sha256,
        extra={"config": cfg.training_job(), "train": train_info},
    )
    if any(aml_val):
        save_aml_calibration(model, tok, cfg, aml_val, adapter_dir)
    rows = evaluate_tasks(model, tok, cfg.data, load_test_sets(cfg, splits, cfg.data.eval_limit) if sentiment else {},
                          aml_test, cfg.eval, progress=progress)
    for r in rows:
        r["setting"] = "lora"
    extra = {
        "train": train_info, "losses": result.losses, "periodic_evals": result.evals,
        "adapter": str(adapter_dir), "wall_s": round(time.perf_counter() - t_start, 1), "peak_rss_mb": peak_rss_mb(),
    }
    json_path, md_path = write_results(
        out_dir / "metrics", benchmark="train", config=cfg.model_dump(mode="json"), seed=cfg.training.seed,
        rows=rows, columns=["setting", *SUMMARY_COLUMNS], extra=extra, title=f"{cfg.name}: evaluation",
    )
    plot_training(result, [r for r in rows if r["method"] != "generate"] or rows, out_dir / "report.png")
    write_text_atomic(out_dir / "config.yaml", _yaml(cfg))
    return {"out_dir": str(out_dir), "adapter": str(adapter_dir), "metrics": str(json_path), "table": str(md_path),
            "plot": str(out_dir / "report.png"), "rows": rows, **extra}


def save_aml_calibration(model, tokenizer, cfg: Config, val: list[list], adapter_dir: Path) -> None:
    """Fit the risk score's calibration on the validation cases (one histogram per bank, as a federation does) and
    save it beside the adapter, where the inference service reads it; a fit the cases cannot give is logged."""
    from .common.evaluate import fit_aml_calibration
    from .common.tasks.aml_calibration import CalibrationError

    try:
        cal = fit_aml_calibration(model, tokenizer, val, cfg.eval, max_length=cfg.data.max_length,
                                  max_lines=cfg.data.aml.max_lines)
    except CalibrationError as err:
        log.warning("no AML calibration saved: %s", err)
        return
    cal.save(adapter_dir)
    log.info("AML risk calibration (%d validation cases): threshold %.3f, validation F1 %.3f", cal.n_positive +
             cal.n_negative, cal.threshold, cal.validation_f1)


def run_eval(cfg: Config, adapter: str | Path | None = None, out: str | Path | None = None,
             progress: bool = True) -> dict:
    """Zero-shot (no adapter) or adapter evaluation on the configured benchmark test sets."""
    out_dir = run_dir(cfg, out, "eval")
    t0 = time.perf_counter()
    loaded = load_base_model(cfg.model)
    model, setting, manifest = loaded.model, "zero-shot", None
    if adapter:
        model, manifest = load_adapter(loaded.model, adapter, base_sha256=loaded.base_sha256)
        setting = "lora"
    aml_test = []
    if "aml" in cfg.data.tasks:
        from .common.tasks.aml_scenario import held_out_sample

        aml_test = held_out_sample(cfg.data, cfg.federation.num_banks)
    sets = load_test_sets(cfg, limit=cfg.data.eval_limit) if "sentiment" in cfg.data.tasks else {}
    rows = evaluate_tasks(model, loaded.tokenizer, cfg.data, sets, aml_test, cfg.eval, progress=progress)
    for r in rows:
        r["setting"] = setting
    json_path, md_path = write_results(
        out_dir / "eval", benchmark="eval", config=cfg.model_dump(mode="json"), seed=cfg.data.seed, rows=rows,
        columns=["setting", *SUMMARY_COLUMNS], title=f"{setting} evaluation",
        extra={"adapter": str(adapter) if adapter else None, "adapter_sha256": manifest and manifest["weights_sha256"],
               "wall_s": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb()},
    )
    return {"out_dir": str(out_dir), "metrics": str(json_path), "table": str(md_path), "rows": rows}


def _yaml(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
