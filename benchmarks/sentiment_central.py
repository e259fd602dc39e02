"""Centralized FinGPT sentiment on SmolLM2-135M-Instruct: the training engine's throughput, recipe learning curves
against CPU-minutes, and the chosen recipe scored on the full test sets.

Sections (each cell cached in WORK/cells.json, so an interrupted run continues where it stopped):
  order       the chosen recipe on the shuffled mix, batched by length with tasks mixed and batched by instruction
              then length (the shared opening's batching), the same seed and steps: the curves of both
  throughput  this machine's GEMM peak in the training dtype, then our loop (output head only where an answer token
              is predicted, each batch's common opening run once) against the same loop without the shared opening
              and with full logits, on identical batches, alternating runs
  curves      one recipe change at a time from a reference recipe, the same data order for all: weighted F1 on
              seeded samples of FPB test and TFNS valid against training CPU-minutes
  final       the chosen recipe (configs/sentiment_benchmark.yaml, or --final-set overrides), scored on every row of
              FPB, FiQA-SA, TFNS and NWGI with bootstrap 95 % intervals

Writes benchmarks/results/sentiment_central.{json,md,png}.
Usage: python benchmarks/sentiment_central.py [--sections throughput,curves,final] [--curve-steps N]
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from pathlib import Path

import torch

from _shared import CellCache, benchmark_parser, finish_results
from fedfingpt.common.train import answer_loss, batch_order, collate, opening_groups, shared_opening_length, train
from fedfingpt.common.adapter import save_adapter
from fedfingpt.common.config import load_config
from fedfingpt.common.evaluate import evaluate_sentiment, sample_rows
from fedfingpt.common.models import attach_lora, load_base_model, use_bf16
from fedfingpt.common.report import cpu_info, peak_rss_mb
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import sentiment_splits, training_mix

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# One change at a time from the reference recipe (the first entry); the same examples in the same order for all.
RECIPES = {
    "ref: attn r8 lr1e-3 b8 answer-loss": {},
    "lora dropout 0.05": {"lora.dropout": 0.05},
    "lr 5e-4": {"training.lr": 5e-4},
    "lr 2e-3": {"training.lr": 2e-3},
    "all linear": {"lora.target_modules": ALL_LINEAR},
    "rank 16": {"lora.r": 16, "lora.alpha": 32},
    "batch 16": {"training.batch_size": 16},
    "label loss": {"training.loss": "labels"},
}
# How the loop batches the shuffled mix, with the chosen recipe: the same examples, seed and steps for both.
ORDERS = {
    "batches by length (tasks mixed)": {"training.group_by_opening": False},
    "batches by instruction, then length": {"training.group_by_opening": True},
}
CURVE_BASE = {"training.lr": 1e-3, "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.0, "training.batch_size": 8,
              "training.loss": "answer", "lora.target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def gemm_peak_gflops(bf16: bool, n: int = 1536, reps: int = 8) -> float:
    """The best rate of one large square matrix product on this machine, in the dtype training computes in."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return round(best, 1)


def step_gflop(model, batch: dict, kind: str) -> float:
    """Arithmetic of one training step with frozen base weights: the decoder's matrices forward and back to their
    inputs (2 x 2 x params x positions, padding included; with a shared opening, its positions once instead of once
    per row), plus the head where it is applied (all positions, or those predicting an answer token). LoRA's own
    matrices and attention scores are left out (a few percent)."""
    head = model.get_output_embeddings()
    body = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lora_" not in n
               and p.dim() == 2 and p.data_ptr() != head.weight.data_ptr())
    positions = batch["input_ids"].numel()
    if kind == "ours":
        positions -= (batch["input_ids"].shape[0] - 1) * shared_opening_length(batch)
    head_positions = batch["input_ids"].numel() if kind == "full_logits" else int((batch["labels"][:, 1:] != -100).sum())
    return (4 * body * positions + 4 * head.weight.numel() * head_positions) / 1e9


LOOPS = {  # the training loop's forward, and the two references it is measured against
    "ours": {"shared_opening": True},  # head only at answer positions, each batch's common opening run once
    "no_sharing": {},  # head only at answer positions, every row run whole
    "full_logits": {"full_logits": True},  # the model's own forward: the head at every position
}


def throughput(cfg, encoded, pad_id, steps: int = 8, reps: int = 5) -> dict:
    """Our loop against the same loop without the shared opening and with full logits, on identical batches (batched
    as the loop batches them: by opening and length) in identical order, alternating runs so that all see the same
    machine noise; 2 untimed warm-up steps first; the best of `reps` runs of `steps` steps is kept for each."""
    t = cfg.training
    bf16 = use_bf16(t.bf16_autocast)
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    order = batch_order([len(e) for e in encoded], t.batch_size, random.Random(t.seed), True,
                        groups=opening_groups(encoded))[: steps + 2]
    batches = [collate([encoded[i] for i in b], pad_id) for b in order]
    model = attach_lora(load_base_model(cfg.model).model, cfg.lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr)
    model.train()
    runs = {k: [] for k in LOOPS}
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[2:])
    gflop = {k: sum(step_gflop(model, b, k) for b in batches[2:]) for k in runs}
    for _ in range(reps):
        for kind in runs:
            for i, batch in enumerate(batches):
                if i == 2:
                    t0 = time.perf_counter()
                with ac:
                    loss = answer_loss(model, batch, **LOOPS[kind])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            runs[kind].append(time.perf_counter() - t0)
    peak = gemm_peak_gflops(bf16)
    out = {"dtype": "bf16 autocast" if bf16 else "fp32", "gemm_peak_gflops": peak, "steps": steps,
           "batch_size": t.batch_size, "target_modules": list(cfg.lora.target_modules), "tokens": tokens, "reps": reps,
           "shared_opening_tokens": [shared_opening_length(b) for b in batches[2:]]}
    for kind, times in runs.items():
        best = min(times)
        out[kind] = {"tokens_per_s": round(tokens / best, 1), "s_per_step": round(best / steps, 3),
                     "gflop_per_step": round(gflop[kind] / steps, 1), "gflops": round(gflop[kind] / best, 1),
                     "share_of_peak": round(gflop[kind] / best / peak, 3), "all_s": [round(x, 2) for x in times]}
    # the same batches' tokens per second, in each loop
    out["speedup"] = round(out["ours"]["tokens_per_s"] / out["full_logits"]["tokens_per_s"], 3)
    out["speedup_over_no_sharing"] = round(out["ours"]["tokens_per_s"] / out["no_sharing"]["tokens_per_s"], 3)
    return out


def curve_cell(name: str, overrides: dict, args, splits, mix, quick, base: dict | None = None) -> dict:
    """One recipe's curve. With `base` None: from CURVE_BASE, on the mix's prefix read once in order (recipes);
    with a `base` of overrides (the chosen recipe's file and ORDERS): shuffled and batched as the loop batches."""
    ordered = base is not None
    cfg = load_config(args.config, {**(CURVE_BASE if not ordered else base), **overrides,
                                    "training.max_steps": args.curve_steps, "training.seed": args.seed})
    t = cfg.training
    loaded = load_base_model(cfg.model)
    tok = loaded.tokenizer
    examples_per_step = t.batch_size * t.grad_accum
    # every recipe reads the same examples in the same order: the mix's prefix, one pass, unshuffled
    rows = mix[: args.curve_steps * examples_per_step]
    encoded = encode_sentiment(tok, rows, cfg.data.max_length)
    model = attach_lora(loaded.model, cfg.lora, seed=args.seed)
    t = t.model_copy(update={**({} if ordered else {"shuffle": False, "group_by_length": False}),
                             "eval_every": max(1, args.curve_steps // args.curve_points)})
    clock = {"start": time.perf_counter(), "cpu": time.process_time(), "eval_s": 0.0, "eval_cpu": 0.0}

    def periodic(step: int) -> dict:
        t_train = time.perf_counter() - clock["start"] - clock["eval_s"]
        cpu_train = time.process_time() - clock["cpu"] - clock["eval_cpu"]
        t0, c0 = time.perf_counter(), time.process_time()
        rs = evaluate_sentiment(model, tok, quick, cfg.eval.model_copy(update={"method": "likelihood",
                                                                               "calibrate": False}),
                                max_length=cfg.data.max_length, progress=False)
        clock["eval_s"] += time.perf_counter() - t0
        clock["eval_cpu"] += time.process_time() - c0
        point = {"step": step, "examples": step * examples_per_step, "train_wall_min": round(t_train / 60, 2),
                 "train_cpu_min": round(cpu_train / 60, 2),
                 **{r["dataset"]: round(r["weighted_f1"], 4) for r in rs}}
        log.info("%s: %s", name, point)
        return point

    res = train(model, encoded, t, pad_id=tok.pad_token_id, eval_fn=periodic, progress=not args.quiet)
    return {"recipe": name, "overrides": overrides, "points": [e for _, e in res.evals], "losses": res.losses,
            "s_per_step": round(res.wall_s / res.steps, 3), "final_loss": res.final_loss}


def final_cell(args, splits, mix) -> dict:
    cfg = load_config(args.config, {**dict(kv.split("=", 1) for kv in args.final_set), "training.seed": args.seed})
    t = cfg.training
    loaded = load_base_model(cfg.model)
    tok = loaded.tokenizer
    rows = mix[: t.max_steps * t.batch_size * t.grad_accum]
    encoded = encode_sentiment(tok, rows, cfg.data.max_length)
    model = attach_lora(loaded.model, cfg.lora, seed=args.seed)
    quick = {k: sample_rows(splits["test"][k], t.eval_limit, cfg.data.seed) for k in ("fpb", "tfns")}

    def periodic(step: int) -> dict:
        rs = evaluate_sentiment(model, tok, quick, cfg.eval.model_copy(update={"calibrate": False}),
                                max_length=cfg.data.max_length, progress=False)
        out = {r["dataset"]: round(r["weighted_f1"], 4) for r in rs}
        log.info("final recipe step %d: %s (samples of %d rows)", step, out, t.eval_limit)
        return out

    c0 = time.process_time()
    res = train(model, encoded, t, pad_id=tok.pad_token_id, eval_fn=periodic, progress=not args.quiet)
    adapter = save_adapter(model, Path(args.work) / final_key(args.final_set).replace(":", "_").replace("=", "-")
                           .replace(",", "+").replace("final", "final_adapter", 1), base_id=loaded.base_id,
                           base_sha256=loaded.base_sha256, extra={"config": cfg.model_dump(mode="json")})
    t0 = time.perf_counter()
    tests = {n: splits["test"][n] for n in cfg.data.eval_sets}
    rows_out = evaluate_sentiment(model, tok, tests, cfg.eval.model_copy(update={"calibrate": False}),
                                  max_length=cfg.data.max_length, progress=not args.quiet)
    return {"config": cfg.model_dump(mode="json"), "steps": res.steps, "examples": res.examples,
            "train_wall_min": round(res.wall_s / 60, 1), "train_cpu_min": round((time.process_time() - c0) / 60, 1),
            "s_per_step": round(res.wall_s / res.steps, 3), "final_loss": res.final_loss,
            "curve": [e for _, e in res.evals], "eval_wall_min": round((time.perf_counter() - t0) / 60, 1),
            "rows": [{k: v for k, v in r.items() if k != "confusion"} for r in rows_out], "adapter": str(adapter)}


def final_key(final_set: list[str]) -> str:
    """The cache key of a final run: 'final' for the chosen recipe as written, else with its overrides."""
    return "final" if not final_set else "final:" + ",".join(sorted(final_set))


def finals(cells: dict) -> list[tuple[str, dict]]:
    return sorted(((k, c) for k, c in cells.items() if k == "final" or k.startswith("final:")),
                  key=lambda kc: kc[1]["steps"])


def plot(cells: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for k, c in cells.items() if k.startswith("curve:")]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey=True)
    for row, (xkey, xlabel) in enumerate((("examples", "training examples seen (the same order for every recipe)"),
                                          ("train_cpu_min", "training CPU-minutes (2 threads)"))):
        for ax, ds in zip(axes[row], ("fpb", "tfns")):
            for c in curves:
                ax.plot([p[xkey] for p in c["points"]], [p[ds] for p in c["points"]], marker="o", label=c["recipe"])
            for (_, f), mark in zip(finals(cells), ("k*", "kP", "kX")):
                full = next(r for r in f["rows"] if r["dataset"] == ds)
                x = f["examples"] if xkey == "examples" else f["train_cpu_min"]
                ax.errorbar([x], [full["weighted_f1"]], fmt=mark, ms=12,
                            label=f"chosen recipe, {f['steps']} steps, full test set",
                            yerr=[[full["weighted_f1"] - full["weighted_f1_ci95"][0]],
                                  [full["weighted_f1_ci95"][1] - full["weighted_f1"]]])
            ax.set(title=f"{ds.upper()} weighted F1 (200-row seeded sample)", xlabel=xlabel)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("weighted F1")
    axes[0][1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    from fedfingpt.common.report import save_figure

    save_figure(fig, path, dpi=110)


def write(cells: dict, args, t_all: float) -> None:
    rows = []
    for key, c in ((k, c) for k, c in cells.items() if k.startswith(("curve:", "order:"))):
        last = c["points"][-1]
        rows.append({"section": key.split(":")[0], "recipe": c["recipe"], "steps": last["step"], "examples": last["examples"],
                     "train_wall_min": last["train_wall_min"], "train_cpu_min": last["train_cpu_min"],
                     "s_per_step": c["s_per_step"],
                     "fpb_sample": last["fpb"], "tfns_sample": last["tfns"]})
    for _, f in finals(cells):
        for r in f["rows"]:
            rows.append({"section": "final (full test set)", "recipe": f"chosen, {f['steps']} steps",
                         "dataset": r["dataset"], "n": r["n"], "steps": f["steps"],
                         "weighted_f1": round(r["weighted_f1"], 4), "weighted_f1_ci95": r["weighted_f1_ci95"],
                         "accuracy": round(r["accuracy"], 4), "macro_f1": round(r["macro_f1"], 4),
                         "train_wall_min": f["train_wall_min"], "train_cpu_min": f["train_cpu_min"],
                         "examples": f["examples"]})
    extra = {"throughput": cells.get("throughput"), "cells": cells, "sections_missing":
             [s for s in ("throughput", "final") if s not in cells] + [f"curve:{n}" for n in RECIPES
                                                                        if f"curve:{n}" not in cells],
             "wall_s": round(time.perf_counter() - t_all, 1), "peak_rss_mb": peak_rss_mb()}
    out = Path(args.out)
    md_extra = []
    if tp := cells.get("throughput"):
        md_extra.append("## Throughput (identical batches, best of %d runs of %d steps, %s)\n\n| loop | tokens/s | s/step "
                        "| GFLOP/step | GFLOP/s | share of GEMM peak (%s GFLOP/s) |\n|---|---|---|---|---|---|"
                        % (tp["reps"], tp["steps"], tp["dtype"], tp["gemm_peak_gflops"]))
        for k in LOOPS:
            if r := tp.get(k):
                md_extra.append(f"| {k} | {r['tokens_per_s']} | {r['s_per_step']} | {r['gflop_per_step']} | "
                                f"{r['gflops']} | {r['share_of_peak']} |")
        md_extra.append(f"\nSpeed-up of ours over full logits: {tp['speedup']}x"
                        + (f"; over the same loop without the shared opening: {tp['speedup_over_no_sharing']}x"
                           if "speedup_over_no_sharing" in tp else "") + "\n")
    if extra["sections_missing"]:
        md_extra.append("Not yet measured: " + ", ".join(extra["sections_missing"]) + "\n")
    finish_results(out, benchmark="sentiment_central", config={"curve_base": CURVE_BASE, "recipes": RECIPES,
                   "curve_steps": args.curve_steps, "config_file": args.config}, seed=args.seed, rows=rows,
                   columns=["section", "recipe", "dataset", "n", "steps", "examples", "train_cpu_min", "train_wall_min",
                            "s_per_step",
                            "fpb_sample", "tfns_sample", "weighted_f1", "weighted_f1_ci95", "accuracy", "macro_f1"],
                   title="Centralized FinGPT sentiment, SmolLM2-135M-Instruct, 2 CPU threads", extra=extra,
                   md_extra="\n".join(md_extra))
    if any(k.startswith("curve:") for k in cells):
        plot(cells, out.with_suffix(".png"))


def main() -> None:
    ap = benchmark_parser("sentiment_central", __doc__, config="sentiment_benchmark.yaml")
    ap.add_argument("--sections", default="throughput,curves,final")
    ap.add_argument("--recipes", help="comma-separated subset of the curve recipes (default: all)")
    ap.add_argument("--curve-steps", type=int, default=120, help="optimizer steps per curve cell")
    ap.add_argument("--curve-points", type=int, default=3, help="evaluations along each curve")
    ap.add_argument("--curve-eval-rows", type=int, default=200, help="rows of FPB and of TFNS scored per point")
    ap.add_argument("--final-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the chosen recipe for the final section (e.g. training.max_steps=600)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    t_all = time.perf_counter()
    cache = CellCache(Path(args.work), settings={"curve_steps": args.curve_steps, "seed": args.seed,
                                                  "curve_eval_rows": args.curve_eval_rows, "cpu": cpu_info()})
    sections = args.sections.split(",")
    cfg = load_config(args.config)
    splits = sentiment_splits(cfg.data.data_dir)
    mix = training_mix(splits["train"], dict(cfg.data.train_mix), seed=cfg.data.seed)
    if "throughput" in sections and "throughput" not in cache.cells:
        tok = load_base_model(cfg.model).tokenizer
        encoded = encode_sentiment(tok, mix[:400], cfg.data.max_length)
        cache.save("throughput", throughput(load_config(args.config), encoded, tok.pad_token_id))
        log.info("throughput: %s", cache.cells["throughput"])
        write(cache.cells, args, t_all)
    if "curves" in sections:
        quick = {k: sample_rows(splits["test"][k], args.curve_eval_rows, cfg.data.seed) for k in ("fpb", "tfns")}
        wanted = args.recipes.split(",") if args.recipes else list(RECIPES)
        for name in wanted:
            if f"curve:{name}" not in cache.cells:
                cache.save(f"curve:{name}", curve_cell(name, RECIPES[name], args, splits, mix, quick))
                write(cache.cells, args, t_all)
    if "order" in sections:
        quick = {k: sample_rows(splits["test"][k], args.curve_eval_rows, cfg.data.seed) for k in ("fpb", "tfns")}
        for name, overrides in ORDERS.items():
            if f"order:{name}" not in cache.cells:
                cache.save(f"order:{name}", curve_cell(name, overrides, args, splits, mix, quick, base={}))
                write(cache.cells, args, t_all)
    if "final" in sections and final_key(args.final_set) not in cache.cells:
        cache.save(final_key(args.final_set), final_cell(args, splits, mix))
    write(cache.cells, args, t_all)
    log.info("wrote %s.{json,md,png}", args.out)


if __name__ == "__main__":
    main()
