"""The run's config as Flower hands it to a ServerApp or ClientApp (run config), read the same way on both sides."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import Config, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]


JOB_KEY = "job-json"  # the scenario, in every train and evaluate message's config: no bank reads it from its disk


def job_record_value(cfg: Config) -> str:
    """What the server puts under JOB_KEY: the whole job but the serving side's settings."""
    return cfg.model_dump_json(exclude={"serving"})


_FROM_MESSAGE: dict[str, Config] = {}


def config_for_message(msg, context) -> Config:
    """The job as the coordinator sent it with this message (every bank trains the coordinator's scenario, whatever
    files it has), else the run config (a message from a server that does not send it)."""
    conf = msg.content.config_records.get("config") if msg.content is not None else None
    text = conf.get(JOB_KEY) if conf is not None else None
    if not text:
        return config_from_context(context)
    if text not in _FROM_MESSAGE:
        _FROM_MESSAGE.clear()  # one scenario at a time per process
        _FROM_MESSAGE[text] = config_from_dict(json.loads(text), f"the coordinator's {JOB_KEY}")
    return _FROM_MESSAGE[text]


def config_from_context(context) -> Config:
    """The run's config: `config-json` (set by fedfingpt) or `config-file` from the Flower run config, else
    $FEDFINGPT_CONFIG, else the default job. A relative `config-file` that does not exist here is read from the
    project folder."""
    rc = dict(context.run_config or {})
    if rc.get("config-json"):
        return config_from_dict(json.loads(rc["config-json"]), "run_config.config-json")
    path = rc.get("config-file") or os.environ.get("FEDFINGPT_CONFIG")
    if path:
        p = Path(path).expanduser()
        tried = [p] if p.is_absolute() else [Path.cwd() / p, REPO / p]
        for where in tried:
            if where.is_file():
                return load_config(where)
        from .config import ConfigError

        raise ConfigError(f"run config config-file={path!r}: not found (looked at {', '.join(map(str, tried))}); "
                          "give an absolute path on the coordinator, or run with `fedfingpt deploy run`, which sends "
                          "the whole scenario as config-json")
    return load_config(None)


VERSIONS_KEY = "versions"  # the ConfigRecord in every bank's reply: what it runs


def party_versions() -> dict[str, str]:
    """fedfingpt's and Flower's versions in this process: every party of a round must run the same."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("fedfingpt", "flwr"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def version_mismatch(theirs: dict | None) -> str | None:
    """Why a bank that reports `theirs` cannot take part in this server's round, or None."""
    if not theirs:
        return "sent no versions (fedfingpt before 0.1.0?): install the federation's pinned fedfingpt and flwr"
    ours = party_versions()
    wrong = [f"{d} {theirs.get(d, '?')} (server {v})" for d, v in ours.items() if theirs.get(d) != v]
    if wrong:
        return f"runs {', '.join(wrong)}: install the federation's pinned versions (constraints.txt)"
    return None


def train_reply(arrays, metrics: dict):
    """The content of a bank's training reply: its shared arrays (an ArrayRecord), its metrics and its versions."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    return RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics),
                       VERSIONS_KEY: ConfigRecord(party_versions())})
