"""Round checkpoints of the global adapter (PEFT folder + manifest with round, config, sha256, metrics) and resume."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from safetensors.numpy import load_file

from ..common.adapter import (ADAPTER_WEIGHTS, AdapterError, peft_names_to_ours,  # noqa: F401 (re-exported)
                              read_manifest, save_adapter)

log = logging.getLogger("fedfingpt.server")
_ROUND_DIR = re.compile(r"^round-(\d{4,})$")


def checkpoint_dir(run_dir: Path, rnd: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"round-{rnd:04d}"


def save_round(model, run_dir: Path, rnd: int, *, base_id: str, base_sha256: str, config: dict, metrics: dict,
               base_residual: dict | None = None, privacy_epsilon: float = 0.0) -> Path:
    """privacy_epsilon: what producing this adapter spent (central DP: the federation's; local DP: the largest
    of the banks' ledgers), shown by the inference service's GetModelInfo."""
    return save_adapter(model, checkpoint_dir(run_dir, rnd), base_id=base_id, base_sha256=base_sha256,
                        extra={"round": rnd, "config": config, "metrics": metrics, "privacy_epsilon": privacy_epsilon},
                        base_residual=base_residual)


def latest_checkpoint(run_dir: Path, base_sha256: str) -> tuple[int, dict, dict] | None:
    """(round, manifest, arrays) of the newest intact checkpoint for this base model; damaged ones are skipped
    with a warning (a crash mid-write leaves only a temporary folder, never a half checkpoint)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    rounds = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _ROUND_DIR.match(p.name)))
    for rnd, path in reversed(rounds):
        try:
            manifest = read_manifest(path)
        except AdapterError as err:
            log.warning("skipping checkpoint %s: %s", path, err)
            continue
        if manifest["base_model_sha256"] != base_sha256:
            log.warning("skipping checkpoint %s: trained on another base model", path)
            continue
        return rnd, manifest, load_file(str(path / ADAPTER_WEIGHTS))
    return None


# Keys that may change between the runs of one federation without changing what is being trained: how the run
# is hosted, and the serving sections (checkpoints store Config.training_job(); older ones stored these too).
RESUMABLE_CHANGES = ("federation.rounds", "federation.resume", "federation.round_timeout_s", "federation.client_cpus",
                     "federation.console", "output_dir", "data.data_dir", "gate.", "serving.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def resume_conflicts(run_dir: Path, config: dict) -> list[str]:
    """Config keys in which the run folder's newest checkpoint differs from `config` (empty: safe to resume)."""
    root = Path(run_dir) / "checkpoints"
    rounds = sorted(p for p in root.iterdir() if _ROUND_DIR.match(p.name)) if root.is_dir() else []
    for path in reversed(rounds):
        try:
            old = read_manifest(path).get("config") or {}
        except AdapterError:
            continue
        a, b = _flatten(old), _flatten(config)
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES))
    return []


def set_aside_checkpoints(run_dir: Path) -> Path | None:
    """Starting over (resume off) moves earlier checkpoints aside instead of deleting them."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir() or not any(root.iterdir()):
        return None
    aside = root.with_name(f"checkpoints.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    root.rename(aside)
    log.warning("federation.resume is off: earlier checkpoints moved to %s", aside)
    return aside
