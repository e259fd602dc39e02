"""Partitioners (seeded, disjoint, skewed as named) and the FedAvg arithmetic on hand-made arrays."""

from collections import Counter

import numpy as np
import pytest

from fedfingpt.common.config import PartitionConfig
from fedfingpt.common.tasks.sentiment_data import fingpt_sentiment_splits
from fedfingpt.server.aggregation import update_problem, weighted_mean
from fedfingpt.common.bank_rows import local_split
from fedfingpt.simulations.partition import PartitionError, partition_pool, training_pool
from fedfingpt.simulations.partition import partition_table, write_partition_report


@pytest.fixture(scope="module")
def pool(data_dir):
    return training_pool(fingpt_sentiment_splits(data_dir)["train"], PartitionConfig(max_rows=1500))


def _covers(parts, n):
    flat = [i for p in parts for i in p]
    return len(flat) == len(set(flat)) and set(flat) <= set(range(n))


def test_iid_is_balanced_and_disjoint(pool):
    parts = partition_pool(pool, 5, PartitionConfig(kind="iid"))
    assert _covers(parts, len(pool)) and sum(map(len, parts)) == len(pool)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_skews_labels_more_at_small_alpha_and_is_seeded(pool):
    def skew(alpha):
        parts = partition_pool(pool, 5, PartitionConfig(kind="dirichlet", alpha=alpha, min_partition_size=10))
        assert _covers(parts, len(pool))
        # mean total-variation distance between each bank's label mix and the pool's
        overall = Counter(e.label for e in pool)
        tv = []
        for p in parts:
            c = Counter(pool[i].label for i in p)
            tv.append(0.5 * sum(abs(c[k] / len(p) - overall[k] / len(pool)) for k in overall))
        return float(np.mean(tv)), parts

    low, parts_a = skew(0.1)
    high, _ = skew(100.0)
    assert low > 0.2 > high
    assert parts_a == skew(0.1)[1], "same seed, same partition"


def test_quantity_and_source_skew(pool):
    q = partition_pool(pool, 4, PartitionConfig(kind="quantity"))
    sizes = [len(p) for p in q]
    assert sizes == sorted(sizes) and sizes[-1] > 5 * sizes[0]
    s = partition_pool(pool, 3, PartitionConfig(kind="source"))
    kinds = [{pool[i].source for i in p} for p in s]
    assert all(len(k) == 1 for k in kinds) and {next(iter(k)) for k in kinds} == {"fpb", "fiqa", "tfns"}
    s5 = partition_pool(pool, 5, PartitionConfig(kind="source"))
    assert _covers(s5, len(pool)) and all(len({pool[i].source for i in p}) == 1 for p in s5)


def test_pool_has_no_repeated_text(data_dir):
    pool = training_pool(fingpt_sentiment_splits(data_dir)["train"], PartitionConfig())
    assert len({" ".join(e.text.lower().split()) for e in pool}) == len(pool)


def test_impossible_partitions_are_explained(pool):
    with pytest.raises(PartitionError, match="at least 3 banks"):
        partition_pool(pool, 2, PartitionConfig(kind="source"))
    with pytest.raises(PartitionError, match="min_partition_size"):
        partition_pool(pool[:60], 5, PartitionConfig(kind="dirichlet", alpha=0.01, min_partition_size=50))
    with pytest.raises(PartitionError, match="cannot be split"):
        partition_pool(pool[:3], 5, PartitionConfig(kind="iid"))


def test_bank_split_and_report(pool, tmp_path):
    cfg = PartitionConfig(kind="dirichlet", alpha=0.5)
    parts = partition_pool(pool, 3, cfg)
    train, test = local_split([pool[i] for i in parts[1]], cfg, 1)
    assert len(train) + len(test) == len(parts[1]) and not {id(e) for e in train} & {id(e) for e in test}
    table = partition_table(pool, parts)
    assert [r["rows"] for r in table] == [len(p) for p in parts]
    assert all(r["negative"] + r["neutral"] + r["positive"] == r["rows"] for r in table)
    md, png = write_partition_report(pool, parts, cfg, tmp_path)
    assert "alpha=0.5" in md.read_text() and png.stat().st_size > 1000


def test_weighted_mean_by_hand():
    a = {"x": np.array([1.0, 2.0], dtype=np.float32), "y": np.array([[0.0]], dtype=np.float32)}
    b = {"x": np.array([3.0, 6.0], dtype=np.float32), "y": np.array([[4.0]], dtype=np.float32)}
    out = weighted_mean([a, b], [1, 3])
    np.testing.assert_allclose(out["x"], [2.5, 5.0], atol=1e-7)
    np.testing.assert_allclose(out["y"], [[3.0]], atol=1e-7)
    assert out["x"].dtype == np.float32 and list(out) == ["x", "y"]
    with pytest.raises(ValueError, match="positive sum"):
        weighted_mean([a, b], [0, 0])
    with pytest.raises(ValueError, match="no updates"):
        weighted_mean([], [])


def test_update_problems_are_named():
    ref = {"a": np.zeros((2, 3), np.float32)}
    assert update_problem({"a": np.ones((2, 3), np.float32)}, ref, 10, 100) is None
    assert "names differ" in update_problem({"b": np.ones((2, 3))}, ref, 10, 100)
    assert "shape" in update_problem({"a": np.ones((3, 2), np.float32)}, ref, 10, 100)
    assert "NaN" in update_problem({"a": np.full((2, 3), np.inf, np.float32)}, ref, 10, 100)
    assert "dtype" in update_problem({"a": np.ones((2, 3), np.int64)}, ref, 10, 100)
    for n in (0, -1, 1000, float("nan")):
        assert "implausible" in update_problem({"a": np.ones((2, 3), np.float32)}, ref, n, 100)


def test_a_bank_adds_its_own_rows_and_bad_rows_are_named(tiny_config, data_dir, tmp_path):
    import json

    from fedfingpt.simulations.bank_folders import simulated_bank_rows as bank_rows
    from fedfingpt.common.config import config_from_dict
    from fedfingpt.common.tasks.sentiment_data import DataFormatError

    extra = tmp_path / "own.jsonl"
    extra.write_text("\n".join(json.dumps({"instruction": "What is the sentiment of this news?", "input": f"row {i}",
                                           "output": "negative"}) for i in range(4)) + "\n")
    base = tiny_config.model_dump(mode="json")
    base["data"]["data_dir"] = str(data_dir)
    base["federation"] = {"num_banks": 3, "partition": {"kind": "iid", "max_rows": 150}}
    plain = bank_rows(config_from_dict(base), 1, 3)[0]
    base["data"]["bank_extra_train"] = {1: str(extra)}
    cfg = config_from_dict(base)
    with_extra, _ = bank_rows(cfg, 1, 3)
    assert len(with_extra) == len(plain) + 4 and with_extra[-1].text == "row 3" and with_extra[-1].source == "bank"
    assert len(bank_rows(cfg, 0, 3)[0]) == len(bank_rows(config_from_dict({**base, "data": {
        **base["data"], "bank_extra_train": {}}}), 0, 3)[0]), "only bank 1 gets them"
    extra.write_text('{"instruction": "x", "input": "y", "output": "maybe"}\n')
    base["data"]["bank_extra_train"] = {1: str(extra)}
    with pytest.raises(DataFormatError, match="own.jsonl"):
        bank_rows(config_from_dict(base), 1, 3)


def test_banks_cut_from_chosen_sources_only(data_dir, tiny_config):
    """A scenario whose banks hold only TFNS rows (what a public warm start on FPB and FiQA never saw): the pool
    has no other source, and its cut is cached apart from the all-sources cut."""
    from fedfingpt.common.bank_rows import cut_key

    train = fingpt_sentiment_splits(data_dir)["train"]
    only = training_pool(train, PartitionConfig(sources=["tfns"]))
    every = training_pool(train, PartitionConfig())
    assert {ex.source for ex in only} == {"tfns"} and len(only) < len(every)
    assert {ex.source for ex in every} >= {"fpb", "fiqa", "tfns"}
    parts = partition_pool(only, 3, PartitionConfig(sources=["tfns"], kind="iid"))
    assert _covers(parts, len(only))
    cfg = tiny_config.model_copy(deep=True)
    cfg.data.data_dir = str(data_dir)
    keyed = cfg.model_copy(deep=True)
    keyed.federation.partition.sources = ["tfns"]
    assert cut_key(cfg, 3) != cut_key(keyed, 3)
    with pytest.raises(ValueError):
        PartitionConfig(sources=["nwgi"])
