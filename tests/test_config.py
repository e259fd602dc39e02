"""Config schema: defaults load, bad files fail with the key path and the reason."""

import pytest

from fedfingpt.common.config import Config, ConfigError, load_config, parse_override


def test_default_is_the_embedded_job():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    assert cfg.model.base == "smollm2-135m-instruct"
    assert cfg.data.train_mix == {"fpb": 6, "fiqa": 21, "tfns": 2}


def test_yaml_values_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  max_steps: 7\nlora:\n  r: 16\n")
    cfg = load_config(p, {"training.lr": 0.001, "data.eval_limit": 5})
    assert (cfg.training.max_steps, cfg.lora.r, cfg.training.lr, cfg.data.eval_limit) == (7, 16, 0.001, 5)


@pytest.mark.parametrize(
    "text, path, reason",
    [
        ("lora:\n  r: -1\n", "lora.r", "greater than 0"),
        ("training:\n  lr: fast\n", "training.lr", "valid number"),
        ("training:\n  max_stepz: 3\n", "training.max_stepz", "Extra inputs"),
        ("data:\n  eval_sets: [fpb, imdb]\n", "data.eval_sets.1", "'fpb'"),
        ("model:\n  quantization: 3bit\n", "model.quantization", "'4bit'"),
        ("training:\n  max_steps: null\n", "training", "max_steps or training.epochs"),
        ("data:\n  train_mix: {fpb: 0, fiqa: 0, tfns: 0}\n", "data.train_mix", "at least one"),
    ],
)
def test_bad_values_name_key_path_and_reason(tmp_path, text, path, reason):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and f"{path}:" in msg and reason in msg


@pytest.mark.parametrize("text, reason", [("", "empty"), ("[1, 2]", "mapping"), ("a: [1,", "not valid YAML")])
def test_unusable_files(tmp_path, text, reason):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=reason):
        load_config(p)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("training.max_steps")
    assert parse_override("training.max_steps=10") == ("training.max_steps", 10)


def test_shipped_configs_validate():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert files, "configs/ holds example files"
    for f in files:
        load_config(f)


def test_embedded_default_is_the_written_out_federated_scenario():
    from pathlib import Path

    from fedfingpt.common.config import load_config

    from fedfingpt.common.config import DEFAULT_JOB

    path = Path(__file__).resolve().parents[1] / "configs" / "federated.yaml"
    assert path.resolve() == DEFAULT_JOB  # one file: the configs folder links to the packaged default job
    assert load_config(path).model_dump() == load_config(None).model_dump()
    assert load_config(None).data.tasks == ["sentiment", "aml"]  # the default scenario trains both tasks
