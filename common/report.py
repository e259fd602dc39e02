"""Result files in the project's one format: JSON (config, seed, machine, rows) plus the same rows as markdown.

Written atomically; used by `fedfingpt train/eval` and every script in benchmarks/.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import sys
import threading
from pathlib import Path

from .metrics import format_markdown_table


def show_progress(logger: logging.Logger) -> None:
    """Processes that Flower starts (Ray workers, flwr-simulation, SuperNodes) have no logging set up: give our
    logger a console handler once so progress lines (round, bank, step, loss, server eval) are seen."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024, 1)


CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


def cpu_info() -> dict:
    """The CPU's model name and the flags that decide the fast paths (bf16 is native only with avx512_bf16/amx)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    from .models import use_bf16

    return {"cpu_model": model, "flags": [f for f in CPU_FLAGS if f in flags], "native_bf16": use_bf16("auto")}


def machine_info() -> dict:
    import torch

    return {
        **cpu_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def save_figure(fig, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_results(
    stem: str | Path,
    *,
    benchmark: str,
    config: dict,
    seed: int,
    rows: list[dict],
    columns: list[str] | None = None,
    extra: dict | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write STEM.json and STEM.md; nested values (confusion matrices) stay in the JSON only."""
    stem = Path(stem)
    payload = {"benchmark": benchmark, "config": config, "seed": seed, "machine": machine_info(), "rows": rows}
    payload.update(extra or {})
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    write_text_atomic(json_path, json.dumps(payload, indent=2, default=str))
    flat = [{k: _interval(v) if _is_interval(v) else v for k, v in r.items()
             if _is_interval(v) or not isinstance(v, (list, dict))} for r in rows]
    md = (f"# {title}\n\n" if title else "") + (format_markdown_table(flat, columns) + "\n" if rows else "")
    write_text_atomic(md_path, md)
    return json_path, md_path


def _is_interval(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)


def _interval(v: list) -> str:
    return f"{v[0]:.3f}-{v[1]:.3f}"


class TreeRSS:
    """Peak resident memory of this process and all its descendants (the Ray workers), sampled every 0.5 s."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.5)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
