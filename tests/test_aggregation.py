"""Aggregation arithmetic of every LoRA strategy on hand-made arrays, through the strategies' own Flower
configure_train/aggregate_train (exact to 1e-5), plus robustness to a scaled or sign-flipped update."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedfingpt.client.app import proximal_term
from fedfingpt.common.runconfig import train_reply
from fedfingpt.common.adapter import arrays_to_record, record_to_arrays, select_parts, truncate_rank
from fedfingpt.common.config import ConfigError, config_from_dict
from fedfingpt.server.aggregation import (coordinate_median, fedex_residual, hetero_rank_mean, norm_bounded_mean,
                                          trimmed_mean, update_problem, weighted_mean)
from fedfingpt.server.strategies import STRATEGIES, build_strategy, check_strategy

A1, B1, A2, B2 = "m1.lora_A.weight", "m1.lora_B.weight", "m2.lora_A.weight", "m2.lora_B.weight"
N = [10.0, 20.0, 30.0]


class Nodes:
    """The part of Flower's Grid a strategy's configure_* reads: which nodes are connected."""

    def get_node_ids(self):
        return [11, 12, 13]


@pytest.fixture(autouse=True)
def _task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # Messages need a run identity


def reference(rank=2, seed=0):
    rng = np.random.default_rng(seed)
    return {A1: rng.normal(size=(rank, 5)).astype(np.float32), B1: np.zeros((4, rank), np.float32),
            A2: rng.normal(size=(rank, 3)).astype(np.float32), B2: np.zeros((6, rank), np.float32)}


def bank_updates(ref, seed=1, k=3, scale=0.1):
    rng = np.random.default_rng(seed)
    return [{n: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for n, v in ref.items()} for _ in range(k)]


def one_round(strategy, ref, updates, rnd=1, weights=N):
    """configure_train then aggregate_train with replies carrying `updates`; returns (messages, new arrays)."""
    msgs = sorted(strategy.configure_train(rnd, arrays_to_record(ref), ConfigRecord({}), Nodes()),
                  key=lambda m: m.metadata.dst_node_id)
    replies = [Message(train_reply(arrays_to_record(u), {"num-examples": w, "bank-id": i}), reply_to=m)
               for i, (m, u, w) in enumerate(zip(msgs, updates, weights))]
    arrays, _ = strategy.aggregate_train(rnd, replies)
    return msgs, (record_to_arrays(arrays) if arrays is not None else None)


def make(name, **agg):
    cfg = config_from_dict({"lora": {"r": 2, "alpha": 4}, "federation": {"strategy": name, "aggregation": agg}})
    return build_strategy(cfg, min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0)


def mean_of(updates, weights=N):
    w = np.asarray(weights) / np.sum(weights)
    return {k: sum(wi * u[k].astype(np.float64) for wi, u in zip(w, updates)) for k in updates[0]}


def close(got, want, atol=1e-5):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=atol, err_msg=k)


def test_fedavg_and_fedprox_are_the_weighted_mean_and_fedprox_sends_mu():
    ref = reference()
    ups = bank_updates(ref)
    _, got = one_round(make("fedavg"), ref, ups)
    close(got, mean_of(ups))
    msgs, got = one_round(make("fedprox", proximal_mu=0.3), ref, ups)
    close(got, mean_of(ups))
    assert msgs[0].content["config"]["proximal-mu"] == pytest.approx(0.3)


def test_uniform_weighting_counts_every_bank_the_same_and_is_refused_under_secure_aggregation():
    ref = reference()
    ups = bank_updates(ref)
    _, got = one_round(make("fedavg", weighting="uniform"), ref, ups)
    close(got, mean_of(ups, weights=[1, 1, 1]))
    assert not np.allclose(got[A1], mean_of(ups)[A1], atol=1e-4)  # the example weights differ: so would the mean
    with pytest.raises(ConfigError, match="weighting uniform with privacy.secure_aggregation"):
        check_strategy(config_from_dict({"federation": {"aggregation": {"weighting": "uniform"}},
                                         "privacy": {"secure_aggregation": True}}))


def test_proximal_term_pulls_toward_the_global_weights():
    model = torch.nn.ModuleDict({"lora_A": torch.nn.Linear(3, 2, bias=False)})
    w0 = model["lora_A"].weight.detach().clone()
    term = proximal_term(model, mu=0.5)
    assert float(term(model).detach()) == 0.0
    with torch.no_grad():
        model["lora_A"].weight.add_(1.0)
    value = term(model)
    assert float(value) == pytest.approx(0.5 * 0.5 * w0.numel())  # (mu/2)·||1||²
    value.backward()
    torch.testing.assert_close(model["lora_A"].weight.grad, torch.full_like(w0, 0.5))  # mu·(w − w0)


def test_fedavgm_applies_server_momentum_over_two_rounds():
    ref = reference()
    s = make("fedavgm", server_lr=0.7, server_momentum=0.9)
    ups1 = bank_updates(ref, seed=1)
    _, x1 = one_round(s, ref, ups1, rnd=1)
    g1 = {k: ref[k] - v for k, v in mean_of(ups1).items()}  # pseudo-gradient
    want1 = {k: ref[k] - 0.7 * g1[k] for k in ref}
    close(x1, want1)
    ups2 = bank_updates(x1, seed=2)
    _, x2 = one_round(s, x1, ups2, rnd=2)
    g2 = {k: x1[k] - v for k, v in mean_of(ups2).items()}
    close(x2, {k: x1[k] - 0.7 * (0.9 * g1[k] + g2[k]) for k in ref})


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_server_optimisers(name):
    ref = reference()
    eta, b1, b2, tau = 0.01, 0.9, 0.99, 1e-6
    s = make(name, adaptive_lr=eta, beta_1=b1, beta_2=b2, tau=tau)
    ups = bank_updates(ref)
    _, got = one_round(s, ref, ups)
    delta = {k: v - ref[k] for k, v in mean_of(ups).items()}
    m = {k: (1 - b1) * d for k, d in delta.items()}
    v = {k: (1 - b2) * d**2 for k, d in delta.items()}  # Adam and Yogi agree from v = 0
    step = eta * np.sqrt(1 - b2**2) / (1 - b1**2) if name == "fedadam" else eta  # FedAdam's bias correction
    close(got, {k: ref[k] + step * m[k] / (np.sqrt(v[k]) + tau) for k in ref}, atol=1e-5)
    assert all(v.dtype == np.float32 for v in got.values()), "the global adapter stays float32 (traffic)"


def test_ffa_lora_shares_only_b_and_is_exact():
    ref = reference()
    s = make("ffa_lora")
    shared = select_parts(ref, s.parts)
    ups = [select_parts(u, "B") for u in bank_updates(ref)]
    msgs, got = one_round(s, shared, ups)
    assert set(record_to_arrays(msgs[0].content["arrays"])) == {B1, B2}
    close(got, mean_of(ups))
    for a, b in ((A1, B1), (A2, B2)):  # A is the same frozen matrix everywhere, so the mean of B·A is exact
        exact = sum(w * (u[b].astype(np.float64) @ ref[a]) for w, u in zip(np.asarray(N) / sum(N), ups))
        np.testing.assert_allclose(got[b] @ ref[a], exact, atol=1e-5)


def test_fedsa_lora_shares_only_a():
    ref = reference()
    s = make("fedsa_lora")
    assert s.personalised
    ups = [select_parts(u, "A") for u in bank_updates(ref)]
    msgs, got = one_round(s, select_parts(ref, "A"), ups)
    assert set(record_to_arrays(msgs[0].content["arrays"])) == {A1, A2}
    close(got, mean_of(ups))


def test_fedex_lora_residual_makes_the_aggregate_exact_and_travels_to_banks():
    ref = reference()
    scale = 4 / 2
    s = make("fedex_lora")
    ups = bank_updates(ref, scale=0.5)
    _, got = one_round(s, ref, ups)
    close(got, mean_of(ups))
    w = np.asarray(N) / sum(N)
    for prefix, (a, b) in {"m1": (A1, B1), "m2": (A2, B2)}.items():
        exact = scale * sum(wi * (u[b].astype(np.float64) @ u[a]) for wi, u in zip(w, ups))
        naive = scale * (got[b].astype(np.float64) @ got[a])
        assert np.abs(exact - naive).max() > 1e-3, "the test's updates make plain FedAvg inexact"
        np.testing.assert_allclose(s.residual[prefix] + naive, exact, atol=1e-5)
    # the next round sends the residual beside the adapter; a second round accumulates it
    msgs, got2 = one_round(s, got, bank_updates(got, seed=5, scale=0.5), rnd=2)
    assert set(record_to_arrays(msgs[0].content["base-residual"])) == {"m1", "m2"}
    mean, res = fedex_residual(ups, N, scale)
    np.testing.assert_allclose(record_to_arrays(msgs[0].content["base-residual"])["m1"], res["m1"], atol=1e-6)


def test_hetlora_pads_lower_ranks_and_averages_each_component_over_its_holders():
    ref = reference(rank=4)
    s = build_strategy(config_from_dict({"lora": {"r": 4, "alpha": 8}, "federation": {
        "strategy": "hetlora", "num_banks": 3, "aggregation": {"bank_ranks": {0: 1, 1: 2}}}}),
        min_train_nodes=3, min_available_nodes=3, fraction_evaluate=0.0)
    full = bank_updates(ref)
    ups = [truncate_rank(full[0], 1), truncate_rank(full[1], 2), full[2]]
    assert ups[0][A1].shape == (1, 5) and ups[0][B1].shape == (4, 1)
    _, got = one_round(s, ref, ups)
    w = np.asarray(N)
    np.testing.assert_allclose(got[A1][0], (w[0] * full[0][A1][0] + w[1] * full[1][A1][0] + w[2] * full[2][A1][0])
                               / w.sum(), atol=1e-6)
    np.testing.assert_allclose(got[A1][1], (w[1] * full[1][A1][1] + w[2] * full[2][A1][1]) / (w[1] + w[2]), atol=1e-6)
    np.testing.assert_allclose(got[B1][:, 3], full[2][B1][:, 3], atol=1e-6)  # only the rank-4 bank holds it
    assert s.rounds[-1]["ranks"] == [1, 2, 4]
    # a shape that is no truncation is dropped with its reason
    bad = dict(ups[1])
    bad[A1] = np.zeros((2, 4), np.float32)
    assert "not a rank-<= 4 truncation" in update_problem(bad, ref, 10, 100, lower_rank=True)
    assert update_problem(ups[0], ref, 10, 100, lower_rank=True) is None
    np.testing.assert_allclose(hetero_rank_mean([full[2]], [1.0], ref)[B1], full[2][B1], atol=1e-7)


def test_robust_aggregates_match_numpy():
    ref = reference()
    ups = bank_updates(ref, k=5)
    stack = {k: np.stack([u[k] for u in ups]) for k in ref}
    close(coordinate_median(ups), {k: np.median(v, axis=0) for k, v in stack.items()})
    srt = {k: np.sort(v, axis=0) for k, v in stack.items()}
    close(trimmed_mean(ups, 0.2), {k: v[1:4].mean(axis=0) for k, v in srt.items()})
    close(trimmed_mean(ups, 0.0), {k: v.mean(axis=0) for k, v in stack.items()})
    out, bound, norms = norm_bounded_mean(ups, [1] * 5, ref, bound=None)
    assert bound == pytest.approx(np.median(norms))
    want = {k: ref[k] + np.mean([min(1, bound / n) * (u[k] - ref[k]) for u, n in zip(ups, norms)], axis=0) for k in ref}
    close(out, want)
    with pytest.raises(ValueError, match="trim_fraction"):
        trimmed_mean(ups, 0.5)


# norm bounding limits an update's size, not its direction: a sign flip of honest size gets through it
@pytest.mark.parametrize("name,attack", [("median", "scaled"), ("median", "sign_flipped"), ("trimmed_mean", "scaled"),
                                         ("trimmed_mean", "sign_flipped"), ("norm_bound", "scaled")])
def test_robust_strategies_stay_near_the_honest_aggregate(name, attack):
    ref = reference()
    rng = np.random.default_rng(7)
    common = {k: 0.1 * rng.normal(size=v.shape) for k, v in ref.items()}  # honest banks roughly agree
    honest = [{k: (ref[k] + common[k] + 0.02 * rng.normal(size=v.shape)).astype(np.float32) for k, v in ref.items()}
              for _ in range(4)]
    good = mean_of(honest, [1] * 4)
    delta = {k: honest[0][k] - ref[k] for k in ref}
    bad = {k: ref[k] + (30.0 if attack == "scaled" else -10.0) * delta[k] for k in ref}
    ups, weights = [*honest, bad], [1.0] * 5
    s = make(name, trim_fraction=0.2)
    s.min_train_nodes = s.min_available_nodes = 5
    s.configure_train = lambda rnd, arrays, config, grid, _s=s: type(s).configure_train(
        _s, rnd, arrays, config, type("G", (), {"get_node_ids": lambda self: [11, 12, 13, 14, 15]})())
    _, robust = one_round(s, ref, ups, weights=weights)
    plain = weighted_mean(ups, weights)

    def dist(x):
        return np.sqrt(sum(np.sum((x[k] - good[k]) ** 2) for k in ref))

    honest_size = np.sqrt(sum(np.sum((good[k] - ref[k]) ** 2) for k in ref))
    assert dist(plain) > 2 * honest_size, "the attack moves plain FedAvg far away"
    assert dist(robust) < 0.35 * honest_size, (dist(robust), dist(plain), honest_size)
    assert dist(robust) < dist(plain) / 5


def test_every_strategy_is_built_from_the_config():
    for name in STRATEGIES:
        agg = {"bank_ranks": {0: 1}} if name == "hetlora" else {}
        s = build_strategy(config_from_dict({"federation": {"strategy": name, "aggregation": agg}}))
        assert isinstance(s, STRATEGIES[name])


@pytest.mark.parametrize("federation,lora,model,needle", [
    ({"strategy": "fedavg", "num_banks": 3, "aggregation": {"bank_ranks": {0: 4}}}, {}, {},
     "only strategy hetlora can aggregate those"),
    ({"strategy": "hetlora", "num_banks": 3, "aggregation": {"bank_ranks": {0: 16}}}, {"r": 8}, {},
     "cannot exceed the global lora.r"),
    ({"strategy": "hetlora", "num_banks": 3, "aggregation": {"bank_ranks": {5: 4}}}, {}, {}, "bank ids must be 0..2"),
    ({"strategy": "fedex_lora"}, {}, {"quantization": "4bit"}, "a quantized base cannot hold"),
    ({"strategy": "trimmed_mean", "aggregation": {"trim_fraction": 0.5}}, {}, {}, "trim_fraction"),
    ({"strategy": "krum"}, {}, {}, "federation.strategy"),
])
def test_bad_strategy_settings_are_refused_at_load(federation, lora, model, needle):
    from fedfingpt.common.config import ConfigError

    with pytest.raises(ConfigError, match=needle):
        check_strategy(config_from_dict({"federation": federation, "lora": lora, "model": model}))


def test_fedsa_bank_b_survives_a_restart_only_from_the_previous_round(tmp_path, monkeypatch):
    """The bank's B comes from the node state, else from its disk when saved at the previous round, else zero."""
    from types import SimpleNamespace


    from fedfingpt.client.app import _keep_local_b, _local_b

    monkeypatch.setenv("FEDFINGPT_BANK_STATE_DIR", str(tmp_path))
    model = torch.nn.ModuleDict({"m": torch.nn.ModuleDict({"lora_B": torch.nn.Linear(2, 3, bias=False)})})
    state = SimpleNamespace(bank=1, model=model)
    cfg = config_from_dict({})
    ctx = SimpleNamespace(state=RecordDict(), node_config={"partition-id": 1}, run_config={})
    with torch.no_grad():
        model["m"]["lora_B"].weight.fill_(0.25)
    _keep_local_b(state, cfg, ctx, global_round=3)
    assert (tmp_path / "bank-1" / "local_lora_B.npz").is_file()
    assert float(_local_b(state, cfg, ctx, 4)["m.lora_B.weight"].mean()) == 0.25  # node state
    restarted = SimpleNamespace(state=RecordDict(), node_config={"partition-id": 1}, run_config={})
    assert float(_local_b(state, cfg, restarted, 4)["m.lora_B.weight"].mean()) == 0.25  # disk, saved at round 3
    assert float(np.abs(_local_b(state, cfg, restarted, 7)["m.lora_B.weight"]).max()) == 0.0  # stale: starts over


def test_a_reply_whose_packed_arrays_do_not_add_up_is_dropped_with_its_reason():
    from flwr.app import Array

    s, ref = make("fedavg"), reference()
    ups = bank_updates(ref)
    msgs = sorted(s.configure_train(1, arrays_to_record(ref), ConfigRecord({}), Nodes()),
                  key=lambda m: m.metadata.dst_node_id)
    records = [arrays_to_record(u) for u in ups]
    (key,) = records[2].keys()
    records[2][key] = Array(np.ones(7, np.float32))  # truncated in transit, or forged
    replies = [Message(train_reply(r, {"num-examples": w, "bank-id": i}), reply_to=m)
               for i, (m, r, w) in enumerate(zip(msgs, records, N))]
    arrays, _ = s.aggregate_train(1, replies)
    (dropped,) = s.rounds[-1]["dropped"]
    assert "malformed reply" in dropped["reason"] and "past the end" in dropped["reason"]
    close(record_to_arrays(arrays), mean_of(ups[:2], N[:2]))


TOY_STRATEGY = '''"""A toy strategy for the test: banks freeze A and share B, and the mean is halved."""

from fedfingpt.server.strategies.fedavg import LoraFedAvg


class HalfMeanB(LoraFedAvg):
    """Parameters
    ----------
    halve : float (default: 0.5)
        Factor on the mean.
    """

    name = "toy_half_b"
    parts = "B"
    frozen = "A"
    refuses = {"secure_aggregation": "halving needs the updates' count in clear"}

    def __init__(self, *, halve: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.halve = halve

    @classmethod
    def options(cls, cfg):
        return {"halve": 0.5}

    def combine(self, updates, weights, entry):
        return {k: v * self.halve for k, v in super().combine(updates, weights, entry).items()}
'''


def test_a_new_strategy_is_one_file_the_server_finds_and_the_bank_follows(tmp_path, monkeypatch):
    """Adding a strategy touches its own file only: the registry finds it, the config check knows what it refuses,
    and the round config tells the bank what to freeze and send (the bank has no code for it)."""
    import fedfingpt.server.strategies as strategies
    from fedfingpt.client.plan import RoundPlan
    from fedfingpt.common.config import ConfigError

    (tmp_path / "toy_half_b.py").write_text(TOY_STRATEGY)
    monkeypatch.setattr(strategies, "__path__", [*strategies.__path__, str(tmp_path)])
    found = strategies._discover()
    assert set(found) == set(STRATEGIES) | {"toy_half_b"}
    monkeypatch.setattr(strategies, "STRATEGIES", found)
    s = make("toy_half_b")
    assert type(s).__name__ == "HalfMeanB" and s.halve == 0.5
    with pytest.raises(ConfigError, match="secure_aggregation with federation.strategy toy_half_b: halving"):
        check_strategy(config_from_dict({"privacy": {"secure_aggregation": True},
                                         "federation": {"strategy": "toy_half_b"}}))
    ref = select_parts(reference(), "B")
    updates = bank_updates(ref)
    msgs, new = one_round(s, ref, updates)
    plan = RoundPlan.from_config(dict(msgs[0].content["config"]))
    assert (plan.shared, plan.frozen, plan.local) == ("B", "A", "")
    np.testing.assert_allclose(new[B1], 0.5 * mean_of(updates)[B1], atol=1e-6)


def test_an_unknown_strategy_names_the_ones_there_are():
    from fedfingpt.common.config import ConfigError

    with pytest.raises(ConfigError, match="'krum' is not a strategy; choose one of fedadam, fedavg"):
        check_strategy(config_from_dict({"federation": {"strategy": "krum"}}))


@pytest.mark.parametrize("conf, needle", [
    ({"lora-shared": "C"}, "lora-shared='C'"),
    ({"lora-shared": ""}, "would send nothing"),
    ({"lora-shared": "A", "lora-local": "A"}, "keeps only its own B"),
    ({"lora-shared": "AB", "lora-local": "B"}, "overlaps"),
    ({"proximal-mu": -1.0}, "proximal-mu"),
])
def test_a_bank_refuses_a_round_config_it_cannot_follow(conf, needle):
    from fedfingpt.client.plan import RoundPlan

    with pytest.raises(ValueError, match=needle):
        RoundPlan.from_config(conf)


def test_every_strategy_tells_the_bank_what_it_shares():
    from fedfingpt.client.plan import RoundPlan

    plans = {n: RoundPlan.from_config(c.client_config()) for n, c in STRATEGIES.items()}
    assert (plans["ffa_lora"].shared, plans["ffa_lora"].frozen) == ("B", "A")
    assert (plans["fedsa_lora"].shared, plans["fedsa_lora"].local) == ("A", "B")
    assert plans["hetlora"].any_rank and not plans["fedavg"].any_rank
    assert all(p.shared == "AB" and not p.frozen and not p.local for n, p in plans.items()
               if n not in ("ffa_lora", "fedsa_lora"))


def test_two_replies_from_one_bank_id_are_both_refused_and_named():
    """Two SuperNodes started with one bank-id (e.g. both without --node-config, once "bank 0"): the server cannot
    tell which is that bank, so it counts neither, names both nodes, and averages the rest."""
    s, ref = make("fedavg"), reference()
    ups = bank_updates(ref)
    msgs = sorted(s.configure_train(1, arrays_to_record(ref), ConfigRecord({}), Nodes()),
                  key=lambda m: m.metadata.dst_node_id)
    replies = [Message(train_reply(arrays_to_record(u), {"num-examples": w, "bank-id": b}), reply_to=m)
               for m, u, w, b in zip(msgs, ups, N, [0, 0, 2])]
    arrays, _ = s.aggregate_train(1, replies)
    entry = s.rounds[-1]
    assert [b["bank"] for b in entry["banks"]] == [2]
    assert sorted(d["node_id"] for d in entry["dropped"]) == [11, 12]
    assert all("bank id 0 replied from nodes [11, 12]" in d["reason"] for d in entry["dropped"])
    close(record_to_arrays(arrays), ups[2])


def test_a_bank_on_other_versions_is_refused_by_name(monkeypatch):
    """Every reply says which fedfingpt and flwr the bank runs; one that differs from the server's is refused with
    both versions named, and one that says nothing is refused too."""
    from flwr.app import ConfigRecord as CR

    from fedfingpt.common import runconfig

    s, ref = make("fedavg"), reference()
    ups = bank_updates(ref)
    msgs = sorted(s.configure_train(1, arrays_to_record(ref), ConfigRecord({}), Nodes()),
                  key=lambda m: m.metadata.dst_node_id)
    contents = [train_reply(arrays_to_record(u), {"num-examples": w, "bank-id": i})
                for i, (u, w) in enumerate(zip(ups, N))]
    contents[1][runconfig.VERSIONS_KEY] = CR({**runconfig.party_versions(), "flwr": "1.0.0"})
    del contents[2][runconfig.VERSIONS_KEY]
    arrays, _ = s.aggregate_train(1, [Message(c, reply_to=m) for c, m in zip(contents, msgs)])
    entry = s.rounds[-1]
    reasons = {d["bank"]: d["reason"] for d in entry["dropped"]}
    assert [b["bank"] for b in entry["banks"]] == [0]
    assert f"flwr 1.0.0 (server {runconfig.party_versions()['flwr']})" in reasons[1]
    assert "sent no versions" in reasons[2]
    close(record_to_arrays(arrays), ups[0])
