"""Centralized FinGPT sentiment recipe on SmolLM2-135M-Instruct: zero-shot vs LoRA-tuned, loop overhead.

Writes benchmarks/results/sentiment_central.{json,md} and sentiment_central.png. About 45 minutes on 2 cores.
Usage: python benchmarks/sentiment_central.py [--config configs/sentiment_benchmark.yaml] [--steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import time
from pathlib import Path

import torch

from fedfingpt.client.train import batch_order, collate, train
from fedfingpt.common.adapter import save_adapter
from fedfingpt.common.config import load_config
from fedfingpt.common.evaluate import evaluate_sentiment, sample_rows
from fedfingpt.common.models import attach_lora, load_base_model, use_bf16
from fedfingpt.common.report import peak_rss_mb, write_results
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import sentiment_splits, training_mix

HERE = Path(__file__).resolve().parent
log = logging.getLogger("bench")


def bare_peft_tokens_per_s(model, batches, cfg) -> float:
    """The same batches through a minimal PEFT loop (no scheduler, logging or bookkeeping): the reference speed."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    ac = torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16(cfg.bf16_autocast) else contextlib.nullcontext()
    model.train()
    tokens, t0 = 0, time.perf_counter()
    for batch in batches:
        with ac:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - t0)


def overhead(cfg, encoded, pad_id, steps: int = 10, reps: int = 3) -> dict:
    """Our loop vs the bare loop on identical batches in identical order, alternating runs so that both see the
    same machine noise; each run starts with 2 untimed warm-up steps. The best of `reps` runs is kept for each."""
    t = cfg.training.model_copy(update={"max_steps": steps, "log_every": steps, "eval_every": None, "grad_accum": 1,
                                        "max_grad_norm": None, "group_by_length": False, "shuffle": False})
    rng = random.Random(t.seed)
    order = batch_order([len(e) for e in encoded], t.batch_size, rng, True)[: steps + 2]
    warm, timed = order[:2], order[2:]
    ours, bare = [], []
    for _ in range(reps):
        m = attach_lora(load_base_model(cfg.model).model, cfg.lora)
        train(m, [encoded[i] for b in warm for i in b], t.model_copy(update={"max_steps": 2}), pad_id=pad_id,
              progress=False)
        res = train(m, [encoded[i] for b in timed for i in b], t, pad_id=pad_id, progress=False)
        ours.append(res.tokens_per_s)
        m = attach_lora(load_base_model(cfg.model).model, cfg.lora)
        bare_peft_tokens_per_s(m, [collate([encoded[i] for i in b], pad_id) for b in warm], t)
        bare.append(bare_peft_tokens_per_s(m, [collate([encoded[i] for i in b], pad_id) for b in timed], t))
    o, b = max(ours), max(bare)
    return {"ours_tokens_per_s": round(o, 1), "bare_peft_tokens_per_s": round(b, 1),
            "overhead_pct": round(100 * (b - o) / b, 2), "steps": steps, "batch_size": t.batch_size, "reps": reps,
            "all_ours": [round(x, 1) for x in ours], "all_bare": [round(x, 1) for x in bare]}


def plot(curve, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    steps = [s for s, _ in curve]
    for name in ("fpb", "tfns"):
        a.plot(steps, [e[name] for _, e in curve], marker="o", label=f"{name} (periodic, 200-row sample)")
    a.axhline(0.80, ls=":", c="grey", label="target 0.80")
    a.set(xlabel="optimizer step", ylabel="weighted F1", title="learning curve", ylim=(0, 1))
    a.legend(fontsize=8)
    sets = ["fpb", "fiqa", "tfns", "nwgi"]
    width = 0.27
    for k, (setting, method) in enumerate([("zero-shot", "likelihood"), ("zero-shot", "likelihood-calibrated"),
                                           ("lora", "likelihood")]):
        vals = [next((r["weighted_f1"] for r in rows if r["setting"] == setting and r["method"] == method
                      and r["dataset"] == s), 0) for s in sets]
        b.bar([i + (k - 1) * width for i in range(4)], vals, width, label=f"{setting} {method}")
    b.set_xticks(range(4), sets)
    b.set(ylim=(0, 1), ylabel="weighted F1", title="test sets (seeded samples)")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_overhead(out: Path, over: dict) -> None:
    import json

    from fedfingpt.common.report import write_text_atomic

    payload = json.loads(out.with_suffix(".json").read_text())
    payload["loop_overhead"] = over
    write_text_atomic(out.with_suffix(".json"), json.dumps(payload, indent=2, default=str))
    md = out.with_suffix(".md").read_text().splitlines()
    md = [f"Loop overhead vs bare PEFT loop: {over}" if ln.startswith("Loop overhead") else ln for ln in md]
    write_text_atomic(out.with_suffix(".md"), "\n".join(md) + "\n")
    log.info("updated %s", out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=str(HERE.parent / "configs" / "sentiment_benchmark.yaml"))
    ap.add_argument("--steps", type=int, help="override training.max_steps")
    ap.add_argument("--eval-limit", type=int, default=400, help="rows per test set, seeded sample (0 = all)")
    ap.add_argument("--generate-limit", type=int, default=100, help="rows per set for generate-and-parse")
    ap.add_argument("--out", default=str(HERE / "results" / "sentiment_central"))
    ap.add_argument("--overhead-only", action="store_true",
                    help="re-measure only the loop overhead (on an idle machine) and update the results files")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    cfg = load_config(args.config, {"training.max_steps": args.steps} if args.steps else None)
    t_all = time.perf_counter()

    splits = sentiment_splits(cfg.data.data_dir)
    tests = {n: sample_rows(splits["test"][n], args.eval_limit or None, cfg.data.seed) for n in cfg.data.eval_sets}
    mix = training_mix(splits["train"], dict(cfg.data.train_mix), seed=cfg.data.seed)
    t = cfg.training
    rows_used = mix[: t.max_steps * t.batch_size * t.grad_accum]
    loaded = load_base_model(cfg.model)
    tok = loaded.tokenizer
    encoded = encode_sentiment(tok, rows_used, cfg.data.max_length)

    log.info("loop overhead: ours vs bare PEFT on the same batches")
    over = overhead(cfg, encoded, tok.pad_token_id)
    log.info("%s", over)
    if args.overhead_only:
        update_overhead(Path(args.out), over)
        return

    log.info("zero-shot evaluation on %s", {k: len(v) for k, v in tests.items()})
    ev = cfg.eval.model_copy(update={"calibrate": True, "method": "likelihood"})
    rows = []
    for r in evaluate_sentiment(loaded.model, tok, tests, ev, max_length=cfg.data.max_length):
        rows.append({"setting": "zero-shot", **r})

    model = attach_lora(loaded.model, cfg.lora)
    quick = {k: sample_rows(splits["test"][k], t.eval_limit, cfg.data.seed) for k in ("fpb", "tfns")}

    def periodic(step: int) -> dict:
        rs = evaluate_sentiment(model, tok, quick, cfg.eval.model_copy(update={"method": "likelihood"}),
                                max_length=cfg.data.max_length, progress=False)
        out = {r["dataset"]: r["weighted_f1"] for r in rs}
        log.info("step %d periodic weighted F1 %s", step, out)
        return out

    log.info("training %d steps x %d examples", t.max_steps, t.batch_size * t.grad_accum)
    res = train(model, encoded, t, pad_id=tok.pad_token_id, eval_fn=periodic,
                on_log=lambda s, l: log.info("step %d loss %.4f", s, l) if s % 50 == 0 else None)
    adapter = save_adapter(model, Path("runs/benchmarks/sentiment_central_adapter"), base_id=loaded.base_id,
                           base_sha256=loaded.base_sha256, extra={"config": cfg.model_dump(mode="json")})
    log.info("LoRA evaluation")
    for r in evaluate_sentiment(model, tok, tests, cfg.eval.model_copy(update={"calibrate": True}),
                                max_length=cfg.data.max_length):
        rows.append({"setting": "lora", **r})
    gen_sets = {k: sample_rows(tests[k], args.generate_limit, cfg.data.seed) for k in ("fpb", "tfns")}
    for r in evaluate_sentiment(model, tok, gen_sets, cfg.eval.model_copy(update={"method": "generate"}),
                                max_length=cfg.data.max_length):
        rows.append({"setting": "lora", **r})
    train_info = {"steps": res.steps, "examples": res.examples, "tokens": res.tokens, "train_s": round(res.wall_s, 1),
                  "tokens_per_s": round(res.tokens_per_s, 1), "final_loss": res.final_loss,
                  "mix_size": len(mix), "examples_used": len(encoded)}
    for r in rows:
        if r["setting"] == "lora":
            r.update(train_s=train_info["train_s"], train_tokens_per_s=train_info["tokens_per_s"])
    out = Path(args.out)
    write_results(
        out, benchmark="sentiment_central", config=cfg.model_dump(mode="json"), seed=t.seed, rows=rows,
        columns=["setting", "dataset", "method", "n", "accuracy", "weighted_f1", "macro_f1", "ece",
                 "unparsed_share", "eval_s"],
        title="Centralized FinGPT sentiment recipe, SmolLM2-135M-Instruct (CPU, 2 threads)",
        extra={"train": train_info, "learning_curve": res.evals, "losses": res.losses, "loop_overhead": over,
               "adapter": str(adapter), "wall_s": round(time.perf_counter() - t_all, 1), "peak_rss_mb": peak_rss_mb()},
    )
    plot(res.evals, rows, out.with_suffix(".png"))
    with open(out.with_suffix(".md"), "a", encoding="utf-8") as f:
        f.write(f"\nTraining: {train_info}\n\nLoop overhead vs bare PEFT loop: {over}\n\n"
                f"Learning curve (step, weighted F1 on 200-row samples): {res.evals}\n\n"
                f"Wall time {round(time.perf_counter() - t_all)} s, peak RSS {peak_rss_mb()} MB.\n")
    log.info("wrote %s.{json,md,png}", out)


if __name__ == "__main__":
    main()
