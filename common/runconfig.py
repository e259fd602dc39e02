"""The run's config as Flower hands it to a ServerApp or ClientApp (run config), read the same way on both sides."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import Config, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


def config_from_context(context) -> Config:
    """The run's config: `config-json` (set by fedfingpt) or `config-file` from the Flower run config, else
    $FEDFINGPT_CONFIG, else the default job. A relative `config-file` that does not exist here is read from the
    project folder."""
    rc = dict(context.run_config or {})
    if rc.get("config-json"):
        return config_from_dict(json.loads(rc["config-json"]), "run_config.config-json")
    path = rc.get("config-file") or os.environ.get("FEDFINGPT_CONFIG")
    if path:
        p = Path(path)
        return load_config(p if p.is_absolute() or p.exists() else REPO / p)
    return load_config(None)
