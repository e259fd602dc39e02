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


def test_a_node_config_reads_back_as_it_was_written_through_flowers_parser(tmp_path):
    from flwr.common.config import parse_config_args

    from fedfingpt.common.nodeconfig import NodeConfig

    odd = tmp_path / "bank data's folder"  # a space and a quote, as paths on a bank's machine may have
    node = NodeConfig(2, 4, data_dir=str(odd), privacy_epsilon=3.0, lora_rank=4, state_dir="C:\\bank\\state")
    assert NodeConfig.from_flower(parse_config_args([node.to_flower()]), num_banks=9) == node
    # Flower's simulation names a bank partition-id; an unset key leaves the scenario's value
    assert NodeConfig.from_flower({"partition-id": 1}, num_banks=3) == NodeConfig(1, 3)


@pytest.mark.parametrize("raw, needle", [
    ({"bank-id": 3, "num-partitions": 3}, "bank-id=3 must be between 0 and num-partitions - 1 (2)"),
    ({"bank-id": 0, "privacy-epsilon": 0}, "privacy-epsilon=0 must be > 0"),
    ({"bank-id": 0, "lora-rank": "four"}, "lora-rank='four' is not an integer"),
])
def test_a_bad_node_config_names_the_key(raw, needle):
    from fedfingpt.common.nodeconfig import NodeConfig, NodeConfigError

    with pytest.raises(NodeConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        NodeConfig.from_flower(raw, num_banks=3)
