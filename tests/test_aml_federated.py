"""AML across banks: the scenario's split per bank, the multi-task mix, and tiny-model federated AML simulations
(AML alone, and sentiment + AML in one adapter) through Flower's Simulation Engine."""

import json
from collections import Counter
from pathlib import Path

import pytest

from fedfingpt.common.config import ConfigError, config_from_dict
from fedfingpt.common.tasks.aml_scenario import AmlScenarioError, aml_split, mix_to_share
from fedfingpt.simulations.run import simulate

from test_simulation import sim_config


def _data(data_dir, **aml):
    return config_from_dict({"data": {"data_dir": str(data_dir), "tasks": ["aml"], "aml": aml}}).data


def test_generated_split_holds_out_every_group_and_is_deterministic(data_dir):
    data = _data(data_dir, generator={"laundering_rate": 0.15, "accounts_per_bank": 120}, test_share=0.3)
    split = aml_split(data, 3)
    assert split.banks == ["bank_0", "bank_1", "bank_2"] and split.outside == 0
    ids = [c.id for t in split.train for c in t]
    assert len(ids) == len(set(ids)) and not set(ids) & {c.id for c in split.test}  # disjoint, no duplicates
    for b in range(3):
        train = Counter(c.typology for c in split.train[b])
        test = Counter(c.typology for c in split.bank_test(b))
        assert all(c.bank == f"bank_{b}" for c in split.train[b])
        for typ, n in train.items():  # a group of n+k cases gave round(0.3 (n+k)) to the test set
            total = n + test[typ]
            assert test[typ] == (round(0.3 * total) if total > 1 else 0), (b, typ)
    # the default typology mix is non-IID: bank 0's launderers use typologies bank 2's never do
    assert {"fan_in", "fan_out", "cycle"} & split.typologies(0)
    assert not {"fan_in", "fan_out"} & split.typologies(2)
    again = aml_split(_data(data_dir, generator={"laundering_rate": 0.15, "accounts_per_bank": 120}), 3)
    assert [c.id for c in again.test] == [c.id for c in split.test]


def test_natural_partition_must_match_the_federation(data_dir):
    data = _data(data_dir, source="amlsim-export", path="aml/amlsim_4bank_export")
    with pytest.raises(AmlScenarioError, match="set federation.num_banks to 4"):
        aml_split(data, 3)
    split = aml_split(_data(data_dir, source="amlsim-export", path="aml/amlsim_4bank_export",
                            negatives_per_positive=10), 4)
    assert split.banks == ["can_bank", "ind_bank", "uae_bank", "usa_bank"]
    for b, name in enumerate(split.banks):  # each member trains on the cases focused at its own customers
        assert split.train[b] and all(c.bank == name == c.accounts[c.focus].bank for c in split.train[b])
    assert sum(c.suspicious for t in split.train for c in t) + sum(c.suspicious for c in split.test) == 3  # 3 alerts
    with pytest.raises(AmlScenarioError, match="not a folder"):
        aml_split(_data(data_dir, source="amlworld", path="aml/nowhere"), 4)


def test_aml_config_errors():
    with pytest.raises(ConfigError, match="needs aml.path"):
        config_from_dict({"data": {"aml": {"source": "amlworld"}}})
    with pytest.raises(ConfigError, match="unknown: smurfing"):
        config_from_dict({"data": {"aml": {"generator": {"typology_mix": {0: {"smurfing": 1}}}}}})
    with pytest.raises(ConfigError, match="listed twice"):
        config_from_dict({"data": {"tasks": ["aml", "aml"]}})


def test_mix_to_share_repeats_or_samples_to_the_ratio():
    aml = list(range(10))
    out = mix_to_share(aml, 90, 0.25, seed=1)  # 25 % of 90 + x: x = 30
    assert len(out) == 30 and Counter(out) == Counter({i: 3 for i in range(10)})
    few = mix_to_share(aml, 18, 0.25, seed=1)  # 6 of the 10, no repeats
    assert len(few) == 6 and len(set(few)) == 6
    assert mix_to_share(aml, 0, 0.25, seed=1) == aml
    assert sorted(mix_to_share(aml, 90, 0.25, seed=1, repeat=False)) == aml  # local DP: each case at most once


@pytest.mark.parametrize("tasks", [["aml"], ["sentiment", "aml"]])
def test_federated_aml_simulation(tiny_config, data_dir, tmp_path, tasks):
    cfg = sim_config(tiny_config, data_dir, tmp_path, rounds=2, local_steps=2)
    raw = cfg.model_dump(mode="json")
    raw["data"].update({"tasks": tasks, "max_length": 160, "aml": {
        "generator": {"accounts_per_bank": 40, "laundering_rate": 0.2}, "eval_limit": 10, "max_lines": 4,
        "val_share": 0.3}})
    raw["federation"]["client_eval_limit"] = 4
    cfg = config_from_dict(raw)
    out = simulate(cfg, tmp_path / "run", progress=False)
    rows = out["rows"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    last = rows[-1]
    assert 0 <= last["aml_f1"] <= 1 and last["aml_pr_auc"] is not None and last["banks_aggregated"] == 3
    assert ("fpb_wf1" in last) == ("sentiment" in tasks)
    aml_eval = next(e for e in out["history"][-1]["eval"] if e["dataset"] == "aml")
    assert aml_eval["n"] == 10 and aml_eval["recall_by_typology"]
    banks = out["history"][-1]["train"]["client_eval"]["banks"]
    assert sorted(b["bank"] for b in banks) == [0, 1, 2] and all(b["aml_cases"] > 0 for b in banks)
    # the banks' validation histograms, summed, give the round's calibration, saved beside its adapter
    from fedfingpt.common.tasks.aml_calibration import Calibration
    from fedfingpt.common.tasks.aml_scenario import aml_split
    from fedfingpt.server.checkpoint import checkpoint_dir

    fitted = out["history"][-1]["train"]["client_eval"]["aml_calibration"]
    val = aml_split(cfg.data, cfg.federation.num_banks).val
    assert fitted["n_positive"] + fitted["n_negative"] == sum(len(v) for v in val) > 0
    assert Calibration.load(checkpoint_dir(tmp_path / "run", 2)) == Calibration(**fitted)
    report = (tmp_path / "run" / "aml_partition.md").read_text()
    assert "| bank_0 |" in report and "Held out for evaluation" in report
    assert json.loads((tmp_path / "run" / "federated.json").read_text())["config"]["data"]["tasks"] == tasks


def test_centralized_training_pools_every_banks_aml_cases(tiny_config, data_dir, tmp_path):
    from fedfingpt.jobs import run_train

    raw = tiny_config.model_dump(mode="json")
    raw["data"].update({"data_dir": str(data_dir), "tasks": ["sentiment", "aml"], "max_length": 160,
                        "eval_sets": ["fpb"], "eval_limit": 6,
                        "aml": {"generator": {"accounts_per_bank": 40, "laundering_rate": 0.2}, "eval_limit": 8,
                                "max_lines": 4, "mix": 0.5, "val_share": 0.3}})
    raw["training"].update({"max_steps": 2, "eval_every": None})
    out = run_train(config_from_dict(raw), tmp_path / "train", progress=False)
    assert [r["dataset"] for r in out["rows"]] == ["fpb", "aml"]
    aml = out["rows"][1]
    assert aml["n"] == 8 and 0 <= aml["f1"] <= 1 and aml["recall_by_typology"]
    assert "| aml |" in (tmp_path / "train" / "metrics.md").read_text()
    from fedfingpt.common.tasks.aml_calibration import Calibration

    cal = Calibration.load(Path(out["adapter"]))  # fitted on the pooled banks' validation cases, beside the adapter
    assert cal is not None and 0 < cal.threshold < 1 and cal.n_positive > 0 and cal.n_negative > 0
