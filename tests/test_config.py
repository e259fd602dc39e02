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
    ({"bank-id": 0, "bank-data": "x", "privacy-epsilon": 0}, "privacy-epsilon=0 must be > 0"),
    ({"bank-id": 0, "bank-data": "x", "lora-rank": "four"}, "lora-rank='four' is not an integer"),
])
def test_a_bad_node_config_names_the_key(raw, needle):
    from fedfingpt.common.nodeconfig import NodeConfig, NodeConfigError

    with pytest.raises(NodeConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        NodeConfig.from_flower(raw, num_banks=3)


def test_the_service_reads_its_own_sections_of_a_job_file_and_refuses_a_stranger(tmp_path):
    """A serving config has model, lora, gate and serving; a training job's file serves too, its training sections
    unread (changing them changes nothing the service attests to); a section of neither kind is refused by name."""
    from fedfingpt.common.config import ServiceConfig, load_service_config
    from fedfingpt.enclave.serving import serving_config_digest

    from pathlib import Path

    shipped = load_service_config(Path(__file__).resolve().parents[1] / "configs" / "serving.yaml")
    assert isinstance(shipped, ServiceConfig) and shipped.gate.policy.roles == {"analyst": {"PERSON": "hash"}}
    job = tmp_path / "job.yaml"
    job.write_text("model: {base: tiny-random}\ndata: {max_length: 96}\ntraining: {max_steps: 5}\n"
                   "serving: {port: 0, max_length: 128}\n")
    a = load_service_config(job, {"serving.max_items": 3})
    assert (a.model.base, a.serving.port, a.serving.max_length, a.serving.max_items) == ("tiny-random", 0, 128, 3)
    assert not hasattr(a, "training") and not hasattr(a, "data")
    job.write_text(job.read_text().replace("max_steps: 5", "max_steps: 50").replace("max_length: 96", "max_length: 64"))
    assert serving_config_digest(load_service_config(job, {"serving.max_items": 3})) == serving_config_digest(a)
    assert serving_config_digest(a.model_copy(update={"gate": a.gate.model_copy(update={"min_score": 0.5})})) != \
        serving_config_digest(a)
    stray = tmp_path / "stray.yaml"
    stray.write_text("serving: {port: 0}\nservng: {port: 1}\n")
    with pytest.raises(ConfigError, match="unknown section.*servng"):
        load_service_config(stray)
    bad = tmp_path / "bad.yaml"
    bad.write_text("serving: {max_length: 8}\n")
    with pytest.raises(ConfigError, match="serving.max_length"):
        load_service_config(bad)


def test_a_bank_trains_the_scenario_the_coordinator_sent_not_a_file_on_its_disk(tmp_path):
    """Stock `flwr run` names a relative config-file that each bank would look up on its own disk; the scenario
    travels in every train and evaluate message instead, and a message without it falls back to the run config."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict

    from fedfingpt.common.config import config_from_dict
    from fedfingpt.common.runconfig import JOB_KEY, config_for_message, job_record_value

    coordinator = config_from_dict({"name": "coordinators-scenario", "federation": {"rounds": 7}})
    ctx = SimpleNamespace(run_config={"config-file": str(tmp_path / "only-on-the-coordinator.yaml")})
    msg = SimpleNamespace(content=RecordDict({"config": ConfigRecord({JOB_KEY: job_record_value(coordinator)})}))
    got = config_for_message(msg, ctx)
    assert got.name == "coordinators-scenario" and got.federation.rounds == 7
    with pytest.raises(Exception, match="only-on-the-coordinator.yaml"):
        config_for_message(SimpleNamespace(content=RecordDict({"config": ConfigRecord({})})), ctx)
