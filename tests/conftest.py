"""Shared fixtures: offline hubs, a per-session model cache, the real data folder, tiny-model configs."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Tiny models are built into a per-session cache; the SmolLM2 conversion keeps the user's cache."""
    if "FEDFINGPT_TEST_CACHE" not in os.environ:
        os.environ["FEDFINGPT_TEST_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = Path(os.environ.get("FEDFINGPT_DATA_DIR", REPO.parent / "shared" / "data"))
    if not d.is_dir():
        pytest.skip(f"real data folder {d} not found; set FEDFINGPT_DATA_DIR")
    return d


@pytest.fixture
def tiny_config(tmp_path):
    from fedfingpt.common.config import config_from_dict

    return config_from_dict(
        {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "model": {"base": "tiny-random", "cache_dir": os.environ["FEDFINGPT_TEST_CACHE"]},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "data": {"tasks": ["sentiment"], "max_length": 96, "eval_limit": 12},
            "training": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "bf16_autocast": False, "log_every": 1,
                         "warmup_ratio": 0.0, "eval_limit": 8},
            "eval": {"batch_size": 8, "bf16_autocast": False},
        }
    )
