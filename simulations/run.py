"""`fedfingpt simulate`: a multi-bank federation on one machine with Flower's Simulation Engine.

Checks memory before starting, writes the partition report, runs our ServerApp and ClientApp, returns the report.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from ..common.config import Config
from ..common.models import resolve_base

log = logging.getLogger("fedfingpt.simulate")


class SimulationError(RuntimeError):
    """A scenario that cannot run here (memory, partitioning); the message says what to change."""


def available_memory_bytes() -> int:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", info["MemTotal"])


def concurrency(cfg: Config) -> int:
    return max(1, min(cfg.federation.num_banks, int((os.cpu_count() or 1) // cfg.federation.client_cpus)))


def estimate_memory_bytes(cfg: Config) -> int:
    """Server plus concurrently training banks: each process holds the fp32 weights, torch's own ~0.6 GB, and
    activations for one batch (measured: SmolLM2-135M, batch 16 x ~90 tokens peaked near 3 GB)."""
    where = resolve_base(cfg.model)
    if not isinstance(where, Path):
        return 0  # hub model: size unknown before download
    weights = sum(p.stat().st_size for p in where.iterdir() if p.suffix in {".safetensors", ".bin"})
    if cfg.model.quantization == "4bit":
        weights //= 6
    elif cfg.model.quantization == "8bit":
        weights //= 3
    t = cfg.training
    activations = int(weights * 2.5 * (t.batch_size * cfg.data.max_length) / (16 * 256))
    per_process = int(weights * 1.3) + activations + 600 * 2**20
    return per_process * (concurrency(cfg) + 1)


def check_memory(cfg: Config) -> int:
    need, have = estimate_memory_bytes(cfg), available_memory_bytes()
    if need > have:
        raise SimulationError(
            f"this scenario needs about {need / 2**30:.1f} GiB ({concurrency(cfg)} banks training at once plus the "
            f"server) but {have / 2**30:.1f} GiB is available; raise federation.client_cpus (fewer banks at once), "
            "lower training.batch_size or data.max_length, or use model.quantization"
        )
    return need


class _DropRunSimulationNotice(logging.Filter):
    """`fedfingpt simulate` hands Flower the ServerApp and ClientApp built from the scenario in this process, which
    only `run_simulation` takes (`flwr run` loads the app by name from the project: see README); its notice that
    `run_simulation` is deprecated is dropped, everything else Flower warns about is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation` function is deprecated" not in record.getMessage()


def quiet_flower(console: str) -> None:
    """Flower's logger prints through its own handler and, through the root logger, a second time: keep one. With
    console 'rounds', Flower's INFO lines (sampling, per-round bookkeeping) are left out too."""
    from flwr.common.logger import update_console_handler

    flwr_log = logging.getLogger("flwr")
    flwr_log.propagate = False
    if not any(isinstance(f, _DropRunSimulationNotice) for f in flwr_log.filters):
        flwr_log.addFilter(_DropRunSimulationNotice())
    update_console_handler(level=logging.WARNING if console == "rounds" else logging.INFO)


def simulate(cfg: Config, run_dir: str | Path | None = None, client_app=None, progress: bool = True,
             grid_hook=None) -> dict:
    """Run the federation of `cfg` through Flower's Simulation Engine; the report's paths and history. With
    federation.console 'rounds' the console holds the round table only (our INFO lines and the model loaders'
    progress bars are left out; warnings and errors still show)."""
    from transformers.utils import logging as hf_logging

    ours = logging.getLogger("fedfingpt")
    level, bars = ours.level, hf_logging.is_progress_bar_enabled()
    if cfg.federation.console == "rounds":
        ours.setLevel(logging.WARNING)
        hf_logging.disable_progress_bar()
    try:
        return _simulate(cfg, run_dir, client_app, grid_hook)
    finally:
        ours.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


def _simulate(cfg: Config, run_dir: str | Path | None, client_app, grid_hook) -> dict:
    from flwr.simulation import run_simulation

    from ..client.app import make_client_app
    from ..common.tasks.sentiment_data import data_dir_from_env, sentiment_splits
    from ..server.app import default_run_dir, make_server_app
    from ..server.strategies import check_strategy
    from ..common.bank_rows import SIMULATED_ENV
    from .bank_folders import write_simulated_banks
    from .partition import partition_pool, training_pool, write_partition_report

    check_strategy(cfg)  # before any process starts
    f = cfg.federation
    run_dir = Path(run_dir) if run_dir else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    need = check_memory(cfg)
    from ..server.app import ResumeError
    from ..server.checkpoint import resume_conflicts

    if cfg.federation.resume and (conflicts := resume_conflicts(run_dir, cfg.training_job())):
        raise ResumeError(run_dir, conflicts)  # before any process starts
    md = png = aml_md = None
    if "sentiment" in cfg.data.tasks:
        splits = sentiment_splits(cfg.data.data_dir)
        pool = training_pool(splits["train"], f.partition)
        parts = partition_pool(pool, f.num_banks, f.partition)
        md, png = write_partition_report(pool, parts, f.partition, run_dir)
        # each bank's rows in the data contract: the simulated banks read them (as a loopback bank can)
        write_simulated_banks(cfg, run_dir / "bank-data", cut=(pool, parts))
        os.environ[SIMULATED_ENV] = str((run_dir / "bank-data").resolve())
    if "aml" in cfg.data.tasks:
        from ..common.tasks.aml_scenario import aml_split, write_aml_report

        aml_md = write_aml_report(aml_split(cfg.data, f.num_banks), run_dir)  # fails here, before any process
    print(f"{f.num_banks} banks ({'+'.join(cfg.data.tasks)}), {concurrency(cfg)} training at once, ~{need / 2**30:.1f} "
          f"GiB; run folder {run_dir}; partition report {', '.join(str(p) for p in (png, aml_md) if p)}", flush=True)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs here: Ray's notice about them is noise
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray workers inherit this process's environment (Ray itself sets OMP_NUM_THREADS from num_cpus).
    os.environ["FEDFINGPT_BANK_STATE_DIR"] = str((run_dir / "banks").resolve())  # what banks keep (FedSA-LoRA's B)
    if cfg.data.data_dir:
        os.environ["FEDFINGPT_DATA_DIR"] = str(data_dir_from_env(cfg.data.data_dir).resolve())
    quiet_flower(f.console)
    quiet = f.console == "rounds"
    backend_config = {
        "client_resources": {"num_cpus": f.client_cpus, "num_gpus": 0.0},
        # with console 'rounds', the banks' own output stays in Ray's log files (a bank's error still reaches the
        # round table as a dropped update with its reason)
        "init_args": {"num_cpus": os.cpu_count() or 1, "object_store_memory": 256 * 2**20,
                      "include_dashboard": False, "log_to_driver": not quiet,
                      "logging_level": logging.WARNING if quiet else logging.INFO},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if client_app is None and cfg.privacy.secure_aggregation:
            from ..client.secure import make_secure_client_app

            client_app = make_secure_client_app(cfg)
        run_simulation(server_app=make_server_app(cfg, run_dir, grid_hook),
                       client_app=client_app or make_client_app(cfg), num_supernodes=f.num_banks,
                       backend_config=backend_config)
    report_path = run_dir / "federated.json"
    if not report_path.is_file():
        raise SimulationError(f"the simulation ended without a report in {run_dir}; see the log above")
    import json

    payload = json.loads(report_path.read_text())
    return {"run_dir": str(run_dir), "report": str(run_dir / "report.md"), "metrics": str(report_path),
            "plot": str(run_dir / "accuracy.png"), "partition": md and str(md), "partition_plot": png and str(png),
            "aml_partition": aml_md and str(aml_md),
            "rows": payload["rows"], "history": payload["history"]}
