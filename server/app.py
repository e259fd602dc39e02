"""The coordinator's Flower ServerApp: initial or resumed global adapter, the chosen LoRA strategy, server-side
evaluation on the benchmark test sets and a checkpoint every round, and the run report (JSON, markdown, PNG).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from ..common.adapter import (arrays_to_record, get_lora_arrays, read_base_residual, record_to_arrays, select_parts,
                              set_lora_arrays, start_from_adapter)
from ..common.config import Config
from ..common.evaluate import evaluate_tasks, sample_rows
from ..common.metrics import format_markdown_table
from ..common.models import attach_lora, load_base_model
from ..common.runconfig import JOB_KEY, job_record_value
from ..common.report import machine_info, peak_rss_mb, save_figure, show_progress, write_text_atomic
from ..common.tasks.sentiment_data import sentiment_splits
from .checkpoint import (checkpoint_dir, latest_checkpoint, peft_names_to_ours, resume_conflicts, save_round,
                         set_aside_checkpoints)
from .privacy import central_epsilon, wrap_central_dp
from .strategies import build_strategy

log = logging.getLogger("fedfingpt.server")


class ResumeError(RuntimeError):
    def __init__(self, run_dir: Path, conflicts: list[str]) -> None:
        super().__init__(
            f"{run_dir} holds a run of another configuration (it differs at {', '.join(conflicts[:6])}); "
            "give this scenario another name (--set name=... or --out), or set federation.resume=false to start over"
        )


def default_run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / cfg.name


def run_server(grid: Grid, cfg: Config, run_dir: Path, context: Context | None = None) -> dict:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # the coordinator's only way to find its results when Flower runs this ServerApp (`flwr log` shows it)
    print(f"fedfingpt: run folder {run_dir.resolve()} (report.md, federated.json, checkpoints/)", flush=True)
    f = cfg.federation
    t_start = time.perf_counter()
    loaded = load_base_model(cfg.model)
    model = attach_lora(loaded.model, cfg.lora, seed=cfg.training.seed)  # the same LoRA init the banks build
    if f.initial_adapter:  # a starting point every bank loads too (client/bank.py)
        start_from_adapter(model, f.initial_adapter, base_sha256=loaded.base_sha256)
        log.info("the federation starts from the adapter in %s", f.initial_adapter)
    config_json = cfg.training_job()

    history: list[dict] = []
    done = 0
    state: dict = {}
    if not f.resume:
        set_aside_checkpoints(run_dir)
    elif conflicts := resume_conflicts(run_dir, config_json):
        raise ResumeError(run_dir, conflicts)
    if f.resume and (ck := latest_checkpoint(run_dir, loaded.base_sha256)):
        done, manifest, saved = ck
        set_lora_arrays(model, peft_names_to_ours(saved, list(get_lora_arrays(model))), source=f"checkpoint round {done}")
        state = read_base_residual(checkpoint_dir(run_dir, done))
        prev = run_dir / "federated.json"
        history = json.loads(prev.read_text())["history"] if prev.is_file() else []
        history = [h for h in history if h["round"] <= done]
        log.info("resuming from %s: round %d of %d done", run_dir / "checkpoints", done, f.rounds)
    remaining = f.rounds - done
    if f.console == "rounds" and remaining > 0:
        print(f"{f.num_banks} banks, {f.rounds} rounds x {f.local_steps} local steps, {f.strategy}; scores on "
              f"{f.server_eval_limit or 'all'}-row samples, the last round on the full test sets\n{ROUND_HEADER}",
              flush=True)
    if remaining <= 0:
        log.info("all %d rounds are already done in %s", f.rounds, run_dir)
        return write_report(cfg, run_dir, history, [], t_start)

    tests, final_tests, aml_cases = {}, {}, []
    if "sentiment" in cfg.data.tasks:
        splits = sentiment_splits(cfg.data.data_dir)
        tests = {n: sample_rows(splits["test"][n], f.server_eval_limit, cfg.data.seed) for n in f.server_eval_sets}
        final_tests = {n: list(splits["test"][n]) for n in f.server_eval_sets} if f.final_eval_full else tests
    if "aml" in cfg.data.tasks:
        from ..common.tasks.aml_scenario import held_out_sample

        aml_cases = held_out_sample(cfg.data, f.num_banks)
    strategy = build_strategy(
        cfg, fraction_train=f.fraction_train, fraction_evaluate=1.0 if f.client_eval else 0.0,
        # a round starts once min_banks SuperNodes are online, so a bank that died does not stall the federation
        min_train_nodes=max(1, f.min_banks), min_evaluate_nodes=1, min_available_nodes=max(1, f.min_banks),
        min_valid_updates=f.min_banks, max_examples=f.max_examples_per_bank, round_offset=done,
    )
    if state:
        strategy.restore_state(state)
        strategy.prepare_model(model)
    runner = wrap_central_dp(cfg, strategy) or strategy  # central DP: Flower's wrapper around our strategy

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        rnd = server_round + done
        if server_round == 0 and done:
            return None  # this state was evaluated when its round ended
        set_lora_arrays(model, record_to_arrays(arrays), source=f"aggregate of round {rnd}", partial=True)
        strategy.prepare_model(model)
        due = rnd == f.rounds or (f.server_eval_every > 0 and rnd % f.server_eval_every == 0)
        sets = final_tests if rnd == f.rounds else tests  # the last round's figures are the full test sets'
        t_eval = time.perf_counter()
        rows = [] if strategy.personalised or not due else server_eval(model, loaded.tokenizer, cfg, sets,
                                                                         aml_cases)  # personalised: banks score
        eval_s = round(time.perf_counter() - t_eval, 2)
        scores = {f"{r['dataset']}-{k}": r[k] for r in rows for k in SCORE_KEYS[r["dataset"] == "aml"]
                  if r.get(k) is not None}
        entry = next((e for e in strategy.rounds if e["round"] == rnd), None)
        history.append({"round": rnd, "eval": [{k: v for k, v in r.items() if k != "confusion"} for r in rows],
                        "train": entry, "server_eval_s": eval_s, "t": round(time.perf_counter() - t_start, 1)})
        if cfg.privacy.mode == "central":
            released = sum(1 for h in history if h["train"] and h["train"].get("aggregated"))
            history[-1]["dp_central_epsilon"] = central_epsilon(cfg, released)
            log.info("round %d: central DP epsilon %.3f at delta %g after %d noised aggregates", rnd,
                     history[-1]["dp_central_epsilon"], cfg.privacy.delta, released)
        if rnd > 0:
            spent = history[-1].get("dp_central_epsilon") or max(
                (b.get("dp_epsilon") or 0.0 for h in history if h.get("train") for b in h["train"]["banks"]),
                default=0.0)
            folder = save_round(model, run_dir, rnd, base_id=loaded.base_id, base_sha256=loaded.base_sha256,
                                config=config_json, metrics=scores, base_residual=strategy.state_arrays(),
                                privacy_epsilon=float(spent))
            calibration = ((entry or {}).get("client_eval") or {}).get("aml_calibration")
            if calibration:  # fitted on the banks' validation histograms of this round's adapter
                from ..common.tasks.aml_calibration import Calibration

                Calibration(**calibration).save(folder)
        log.info("round %d server eval: %s", rnd, {k: round(v, 3) for k, v in scores.items()})
        if cfg.federation.console == "rounds":
            print(round_row(rnd, entry, rows, time.perf_counter() - t_start, final=rnd == f.rounds), flush=True)
        write_report(cfg, run_dir, history, strategy.rounds, t_start)  # a partial run still leaves a report
        return MetricRecord(scores) if scores else None

    shared = select_parts(get_lora_arrays(model), strategy.parts)
    if cfg.privacy.secure_aggregation:  # SecAgg+: Flower's legacy workflow; the server sees only the sum
        from .secure import run_secure_rounds

        run_secure_rounds(grid, context, cfg, shared, remaining, evaluate_fn, strategy.rounds, done)
    else:
        runner.start(grid=grid, initial_arrays=arrays_to_record(shared), num_rounds=remaining,
                     timeout=f.round_timeout_s, evaluate_fn=evaluate_fn,
                     # the scenario travels with every message: a bank needs no path and no copy of the config
                     train_config=ConfigRecord({"local-steps": f.local_steps, JOB_KEY: job_record_value(cfg)}),
                     evaluate_config=ConfigRecord({JOB_KEY: job_record_value(cfg)}))
    report = write_report(cfg, run_dir, history, strategy.rounds, t_start)
    print(f"fedfingpt: report {report['report']}", flush=True)
    return report


ROUND_HEADER = (f"{'round':>5}  {'banks':>5}  {'loss':>6}  {'FPB wF1':>8}  {'TFNS wF1':>8}  {'AML F1':>6}  "
                f"{'minutes':>7}")


def round_row(rnd: int, entry: dict | None, rows: list[dict], elapsed_s: float, final: bool = False) -> str:
    """One line of the console's per-round table: banks aggregated, their mean training loss, the server's scores
    (seeded samples before the last round; the last round's are the full test sets, with bootstrap intervals)."""
    banks = (entry or {}).get("banks") or []
    losses = [(b["train_loss"], b["num_examples"]) for b in banks if b.get("train_loss") is not None]
    loss = sum(l * n for l, n in losses) / sum(n for _, n in losses) if losses else None
    by = {r["dataset"]: r for r in rows}

    def cell(ds: str, key: str, width: int) -> str:
        return f"{by[ds][key]:>{width}.3f}" if ds in by and by[ds].get(key) is not None else f"{'-':>{width}}"

    line = (f"{rnd:>5}  {len(banks) if entry else '-':>5}  {'-' if loss is None else f'{loss:.3f}':>6}  "
            f"{cell('fpb', 'weighted_f1', 8)}  {cell('tfns', 'weighted_f1', 8)}  {cell('aml', 'f1', 6)}  "
            f"{elapsed_s / 60:>7.1f}")
    if final and rows:
        full = ", ".join(f"{r['dataset'].upper()} {r['weighted_f1']:.3f} [{r['weighted_f1_ci95'][0]:.3f}, "
                         f"{r['weighted_f1_ci95'][1]:.3f}] (n={r['n']})" for r in rows if "weighted_f1_ci95" in r)
        line += f"\n       last round on the full test sets: {full}" if full else ""
    return line


SCORE_KEYS = {False: ("accuracy", "weighted_f1"), True: ("f1", "pr_auc", "recall")}  # sentiment, AML


def server_eval(model, tokenizer, cfg: Config, tests: dict, aml_cases: list) -> list[dict]:
    """The global adapter on the benchmark sentiment test sets and the held-out AML cases."""
    return evaluate_tasks(model, tokenizer, cfg.data, tests, aml_cases,
                          cfg.eval.model_copy(update={"method": "likelihood", "calibrate": False}))


def write_report(cfg: Config, run_dir: Path, history: list[dict], rounds: list[dict], t_start: float) -> dict:
    """federated.json (everything), report.md (per-round table), accuracy.png (accuracy per round)."""
    rows = []
    for h in history:
        tr = h.get("train") or {}
        banks = tr.get("banks", [])
        row = {"round": h["round"], "setting": "federated"}
        for r in h["eval"]:
            if r["dataset"] == "aml":
                row.update({"aml_f1": r["f1"], "aml_pr_auc": r["pr_auc"], "aml_recall": r["recall"]})
            else:
                row[f"{r['dataset']}_acc"] = r["accuracy"]
                row[f"{r['dataset']}_wf1"] = r["weighted_f1"]
        row.update({
            "banks_aggregated": len(banks) if tr else None,
            "dropped": len(tr.get("dropped", [])) if tr else None,
            "train_loss": (sum(b["train_loss"] * b["num_examples"] for b in banks) / sum(b["num_examples"] for b in banks))
            if banks else None,
            "mb_down_per_bank": banks[0]["bytes_down"] / 1e6 if banks else None,
            "mb_up_per_bank": banks[0]["bytes_up"] / 1e6 if banks else None,
            "banks_local_wf1": (tr.get("client_eval") or {}).get("weighted_f1"),
            **({"banks_local_aml_f1": (tr.get("client_eval") or {}).get("aml_f1")} if "aml" in cfg.data.tasks else {}),
            "dp_epsilon": h.get("dp_central_epsilon", max((b.get("dp_epsilon") or 0 for b in banks), default=None)
                                if any("dp_epsilon" in b for b in banks) else None),
            "round_s": tr.get("round_s"),
            "sum_client_train_s": round(sum(b["train_s"] or 0 for b in banks), 2) if banks else None,
        })
        rows.append(row)
    payload = {"benchmark": "federated", "config": cfg.model_dump(mode="json"), "seed": cfg.training.seed,
               "machine": machine_info(), "rows": rows, "history": history,
               "wall_s": round(time.perf_counter() - t_start, 1), "peak_rss_mb": peak_rss_mb()}
    write_text_atomic(run_dir / "federated.json", json.dumps(payload, indent=2, default=str))
    drops = [f"- round {h['round']}: " + (f"bank {d['bank']} (node {d['node_id']})" if d["bank"] is not None else
                                          f"node {d['node_id']} (no reply from it yet in this run)")
             + f": {d['reason']}" for h in history for d in ((h.get("train") or {}).get("dropped") or [])]
    md = (f"# {cfg.name}: federated run ({cfg.federation.num_banks} banks, {cfg.federation.strategy}, "
          f"{cfg.federation.partition.kind} partition)\n\n{format_markdown_table(rows)}\n\n"
          + ("Dropped updates:\n" + "\n".join(drops) + "\n" if drops else "No update was dropped.\n"))
    write_text_atomic(run_dir / "report.md", md)
    if rows:
        plot_rounds(rows, run_dir / "accuracy.png", cfg.name)
    return {"run_dir": str(run_dir), "report": str(run_dir / "report.md"), "metrics": str(run_dir / "federated.json"),
            "plot": str(run_dir / "accuracy.png"), "rows": rows}


def plot_rounds(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    keys = sorted({k for r in rows for k in r if k.endswith(("_acc", "_wf1")) or k in ("aml_f1", "aml_pr_auc")})
    for key in keys:  # rounds not scored have none
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if not pts:
            continue
        label = (key.replace("_acc", " accuracy").replace("_wf1", " weighted F1").replace("aml_f1", "AML F1")
                 .replace("aml_pr_auc", "AML PR-AUC"))
        ax.plot(*zip(*pts), "-" if key.endswith("_acc") else "--", marker="o" if key.endswith("_acc") else ".",
                label=label)
    ax.set(xlabel="round (0 = initial adapter)", ylabel="score", ylim=(0, 1), title=title)
    if ax.get_legend_handles_labels()[0]:  # keys with no scored round draw nothing
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def retry_transient_pulls(grid: Grid, tries: int = 6, first_wait_s: float = 1.0) -> Grid:
    """Retry the Grid's `pull_messages` when the SuperLink answers with a server error (HTTP 5xx).

    Flower's HTTP Grid retries transport errors and 502/503/504 but gives up at once on a 500, which ends the run.
    Seen on a loaded machine: the SuperLink's SQLite state answered 'database is locked' (after its 5 s busy
    timeout) while banks pushed their updates, and the ServerApp died in round 1. A failed pull marks nothing
    delivered (its transaction is rolled back), so asking again returns the replies. (Had the failure come after
    that, while fetching a reply's arrays, those replies would not come again: the round drops them at its timeout
    and names the banks.) After `tries` attempts (waits of 1, 2, 4, ... s) the error goes through. Other errors, and
    grids without HTTP (the simulation's), are untouched."""
    pull = getattr(grid, "pull_messages", None)
    if pull is None:
        return grid

    def pull_messages(message_ids):
        message_ids = list(message_ids)
        wait = first_wait_s
        for attempt in range(1, tries + 1):
            try:
                return pull(message_ids)
            except Exception as exc:  # noqa: BLE001 - only HTTP 5xx is retried, everything else re-raised
                status = getattr(getattr(exc, "response", None), "status_code", None)
                if not isinstance(status, int) or status < 500 or attempt == tries:
                    raise
                log.warning("the SuperLink answered HTTP %d to a pull of %d replies (attempt %d of %d); asking "
                            "again in %.0f s", status, len(message_ids), attempt, tries, wait)
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    grid.pull_messages = pull_messages  # Flower's send_and_receive calls self.pull_messages
    return grid


def make_server_app(cfg: Config | None = None, run_dir: Path | None = None, grid_hook=None) -> ServerApp:
    """A ServerApp bound to `cfg`; without one, the config comes from the Flower run config (flwr run).
    `grid_hook(grid)` may wrap Flower's Grid (tests look at what the server receives)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from ..common.runconfig import config_from_context

        c = cfg or config_from_context(context)
        if c.federation.console == "banks":
            show_progress(log)
        rd = run_dir or Path(context.run_config.get("run-dir") or default_run_dir(c))
        grid = retry_transient_pulls(grid)
        run_server(grid if grid_hook is None else grid_hook(grid), c, rd, context)

    return app


app = make_server_app()
