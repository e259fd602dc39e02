"""Local DP-SGD through Opacus in the one training loop, and the bank's privacy ledger (real Opacus accountants)."""

import json

import numpy as np
import pytest
import torch

from fedfingpt.client.privacy import LedgerError, PrivacyLedger
from fedfingpt.common.privacy import PrivacyBudgetExceeded, epsilon_of, noise_for_budget
from fedfingpt.server.strategies import check_strategy
from fedfingpt.common.train import DPSpec, collate, example_mean_loss, make_optimizer, make_private, train
from fedfingpt.common.adapter import get_lora_arrays, lora_state
from fedfingpt.common.config import ConfigError, config_from_dict
from fedfingpt.common.models import attach_lora, load_base_model
from fedfingpt.common.tasks.sentiment import encode_sentiment
from fedfingpt.common.tasks.sentiment_data import SentimentExample


@pytest.fixture
def tiny(tiny_config):
    loaded = load_base_model(tiny_config.model)
    torch.manual_seed(0)
    model = attach_lora(loaded.model, tiny_config.lora)
    rows = [SentimentExample(f"profit rose {i} percent" if i % 2 else f"sales fell {i} percent",
                             "positive" if i % 2 else "negative", "fpb", "news") for i in range(24)]
    return model, loaded.tokenizer, encode_sentiment(loaded.tokenizer, rows, 64), tiny_config


def test_only_lora_parameters_get_per_example_gradients(tiny):
    model, tok, enc, cfg = tiny
    optimizer, _ = make_optimizer(model, cfg.training, 1)
    forward, dp_opt = make_private(model, optimizer, DPSpec(1.0, 1.0, 0.5, 4), torch.Generator().manual_seed(0))
    batch = collate(enc[:5], tok.pad_token_id)
    loss = example_mean_loss(forward(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
    loss.backward()
    with_samples = {n for n, p in model.named_parameters() if getattr(p, "grad_sample", None) is not None}
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    assert with_samples == lora and lora
    assert all(p.grad_sample.shape[0] == 5 for n, p in model.named_parameters() if n in lora)
    forward._close()


def test_dp_training_moves_lora_and_leaves_no_hooks(tiny):
    model, tok, enc, cfg = tiny
    before = get_lora_arrays(model)
    tcfg = cfg.training.model_copy(update={"max_steps": 3})
    res = train(model, enc, tcfg, pad_id=tok.pad_token_id, progress=False, dp=DPSpec(0.8, 1.0, 4 / 24, 4))
    after = get_lora_arrays(model)
    assert res.steps == 3 and any(np.abs(after[k] - before[k]).max() > 0 for k in before)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in lora_state(model).values())
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules()), "Opacus hooks removed"


def test_empty_poisson_batches_still_step(tiny):
    model, tok, enc, cfg = tiny
    tcfg = cfg.training.model_copy(update={"max_steps": 4})
    res = train(model, enc, tcfg, pad_id=tok.pad_token_id, progress=False, dp=DPSpec(1.0, 1.0, 1e-6, 1))
    assert res.steps == 4 and res.examples == 0  # noise-only steps, as DP-SGD's accounting assumes


def test_ledger_epsilon_is_the_accountants_and_survives_a_restart(tmp_path):
    from opacus.accountants import RDPAccountant

    ledger = PrivacyLedger.open(tmp_path, bank=0, accountant_kind="rdp", delta=1e-5)
    for rnd in (1, 2, 3):
        ledger.record((1.1, 0.01, 50), run_key="run-a", round=rnd)
    ledger.record((0.9, 0.02, 20), run_key="run-b", round=1)
    acc = RDPAccountant()
    for sigma, q, steps in [(1.1, 0.01, 150), (0.9, 0.02, 20)]:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    want = acc.get_epsilon(delta=1e-5)
    assert ledger.epsilon() == pytest.approx(want, rel=1e-9)
    assert ledger.epsilon() < 3 * epsilon_of("rdp", [(1.1, 0.01, 50)], 1e-5), "composed, not added"
    reopened = PrivacyLedger.open(tmp_path, bank=0, accountant_kind="rdp", delta=1e-5)
    assert reopened.epsilon() == pytest.approx(want, rel=1e-9) and len(reopened.data["entries"]) == 4


def test_ledger_refuses_to_train_past_the_budget(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, bank=3, accountant_kind="rdp", delta=1e-5)
    step = (1.0, 0.02, 20)  # about 1.4 for the first round, then slower (composition)
    spent, rounds = 0.0, 0
    with pytest.raises(PrivacyBudgetExceeded, match=r"bank 3: .* past its budget 2"):
        for rnd in range(1, 100):
            ledger.check(step, 2.0, 3)
            spent = ledger.record(step, run_key="r", round=rnd)
            rounds += 1
    assert rounds >= 3 and 0 < spent <= 2.0 and ledger.epsilon(step) > 2.0


def test_noise_derived_from_the_budget_spends_it(tmp_path):
    sigma = noise_for_budget("rdp", [], 3.0, 1e-5, 0.02, 200)
    eps = epsilon_of("rdp", [(sigma, 0.02, 200)], 1e-5)
    assert 2.9 < eps <= 3.0
    history = [(sigma, 0.02, 100)]  # half spent: the rest of the run needs more noise
    assert noise_for_budget("rdp", history, 3.0, 1e-5, 0.02, 200) > sigma
    with pytest.raises(PrivacyBudgetExceeded, match="already spent"):
        noise_for_budget("rdp", [(0.5, 0.5, 1000)], 1.0, 1e-5, 0.02, 10)


def test_ledger_corrupted_or_missing_is_never_reset(tmp_path):
    ledger = PrivacyLedger.open(tmp_path, bank=1, accountant_kind="rdp", delta=1e-5)
    ledger.record((1.0, 0.01, 10), run_key="r", round=1)
    path = tmp_path / "privacy_ledger.json"
    data = json.loads(path.read_text())
    data["ledger"]["entries"][0]["steps"] = 1  # someone edits the spending down
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="checksum does not match"):
        PrivacyLedger.open(tmp_path, bank=1, accountant_kind="rdp", delta=1e-5)
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="corrupted privacy ledger"):
        PrivacyLedger.open(tmp_path, bank=1, accountant_kind="rdp", delta=1e-5)
    path.unlink()
    with pytest.raises(LedgerError, match="missing but its journal"):
        PrivacyLedger.open(tmp_path, bank=1, accountant_kind="rdp", delta=1e-5)
    other = tmp_path / "other"
    PrivacyLedger.open(other, bank=1, accountant_kind="rdp", delta=1e-5).record((1.0, 0.01, 1), run_key="r", round=1)
    with pytest.raises(LedgerError, match="cannot be carried to another"):
        PrivacyLedger.open(other, bank=1, accountant_kind="prv", delta=1e-5)


@pytest.mark.parametrize("privacy,needle", [
    ({"mode": "local"}, "needs the bank's budget"),
    ({"mode": "local", "epsilon": 0}, "not a usable budget"),
    ({"mode": "local", "epsilon": -2}, "not a usable budget"),
    ({"mode": "local", "epsilon": 1e9}, "not a usable budget"),
    ({"mode": "local", "epsilon": 8, "delta": 0.2}, "privacy.delta 0.2"),
    ({"mode": "local", "epsilon": 8, "delta": 0}, "privacy.delta 0"),
    ({"mode": "local", "noise_multiplier": 1.0}, "a noise multiplier with no budget"),
    ({"mode": "none", "epsilon": 3}, "set mode: local"),
])
def test_bad_privacy_settings_are_refused_at_load(privacy, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict({"privacy": privacy})


def test_fedprox_under_local_dp_is_refused():
    with pytest.raises(ConfigError, match="not a per-example gradient"):
        check_strategy(config_from_dict({"privacy": {"mode": "local", "epsilon": 8},
                                         "federation": {"strategy": "fedprox"}}))


def test_dp_banks_in_simulation_keep_ledgers_and_a_bank_past_its_budget_skips(tiny_config, data_dir, tmp_path):
    from fedfingpt.client.privacy import PrivacyLedger
    from fedfingpt.simulations.run import simulate

    cfg = tiny_config.model_dump(mode="json")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["federation"] = {"num_banks": 3, "rounds": 2, "local_steps": 2, "min_banks": 2, "client_cpus": 1,
                         "server_eval_limit": 8, "final_eval_full": False, "client_eval": False, "round_timeout_s": 120,
                         "partition": {"kind": "iid", "max_rows": 300}}
    # a set noise; banks 0 and 1 can afford both rounds, bank 2's budget is below what one round costs
    cfg["privacy"] = {"mode": "local", "epsilon": 20, "noise_multiplier": 0.9, "bank_epsilon": {2: 0.05},
                      "delta": 1e-3, "expected_batch_size": 16, "physical_batch_size": 4}
    cfg = config_from_dict(cfg)
    run_dir = tmp_path / "run"
    out = simulate(cfg, run_dir)
    trains = [h["train"] for h in out["history"] if h.get("train")]
    assert all(t["aggregated"] for t in trains)
    for t in trains:
        assert sorted(b["bank"] for b in t["banks"]) == [0, 1]
        assert len(t["dropped"]) == 1 and "past its budget 0.05" in t["dropped"][0]["reason"]
        assert all(b["dp_noise_multiplier"] == pytest.approx(0.9) for b in t["banks"])
        # the logical batch sets the sampling rate the ledger accounts: 16 of the bank's training rows per step
        assert all(b["dp_sample_rate"] == pytest.approx(16 / b["num_examples"]) for b in t["banks"])
    for bank in (0, 1):
        ledger = PrivacyLedger.open(run_dir / "banks" / f"bank-{bank}", bank=bank, accountant_kind="rdp", delta=1e-3)
        assert [e["round"] for e in ledger.data["entries"]] == [1, 2]
        reported = trains[1]["banks"][[b["bank"] for b in trains[1]["banks"]].index(bank)]["dp_epsilon"]
        assert reported > 0 and reported == pytest.approx(ledger.epsilon(), rel=1e-9)
    assert not (run_dir / "banks" / "bank-2" / "privacy_ledger.json").exists() or not PrivacyLedger.open(
        run_dir / "banks" / "bank-2", bank=2, accountant_kind="rdp", delta=1e-3).data["entries"]


def _central_cfg(tiny_config, data_dir, tmp_path, clipping, side):
    cfg = tiny_config.model_dump(mode="json")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["federation"] = {"num_banks": 3, "rounds": 2, "local_steps": 2, "min_banks": 3, "client_cpus": 1,
                         "server_eval_limit": 8, "final_eval_full": False, "client_eval": False, "round_timeout_s": 120, "strategy": "fedavg",
                         "partition": {"kind": "iid", "max_rows": 240}}
    cfg["privacy"] = {"mode": "central", "noise_multiplier": 0.8, "clipping_norm": 0.05, "clipping": clipping,
                      "clipping_side": side, "delta": 1e-5}
    return config_from_dict(cfg)


@pytest.mark.parametrize("clipping,side", [("fixed", "server"), ("fixed", "client"), ("adaptive", "server"),
                                           ("adaptive", "client")])
def test_central_dp_wrappers_run_and_report_epsilon(clipping, side, tiny_config, data_dir, tmp_path):
    from opacus.accountants import RDPAccountant
    from safetensors.numpy import load_file

    from fedfingpt.client.app import make_client_app
    from fedfingpt.simulations.run import simulate

    cfg = _central_cfg(tiny_config, data_dir, tmp_path, clipping, side)
    rec = tmp_path / "rec"
    rec.mkdir()
    # what each bank received and finally sent (after its own clipping, when the bank clips)
    out = simulate(cfg, tmp_path / "run", client_app=make_client_app(cfg, outer_mods=[_recording_mod(rec)]))
    eps = [h.get("dp_central_epsilon") for h in out["history"] if h["round"] > 0]
    acc = RDPAccountant()
    want = []
    for _ in range(2):
        acc.step(noise_multiplier=0.8, sample_rate=1.0)
        want.append(acc.get_epsilon(1e-5))
    assert eps == pytest.approx(want, rel=1e-6) and eps[1] > eps[0] > 0
    rows = [r for r in out["rows"] if r["round"] > 0]
    assert rows[-1]["dp_epsilon"] == pytest.approx(want[-1], rel=1e-6)
    # what the server released is the mean of clipped updates plus Gaussian noise of std z*C/m
    sent = [dict(np.load(rec / f"out-r1-b{b}.npz")) for b in range(3)]
    start = dict(np.load(rec / "in-r1-b0.npz"))
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "round-0001" / "adapter_model.safetensors"))
    got = {k: saved[next(p for p in saved if p.endswith(k.split("base_model.model.", 1)[-1]))] for k in start}
    if side == "client" and clipping == "fixed":
        for u in sent:  # each bank clipped its own update before sending
            norm = np.sqrt(sum(np.sum((u[k].astype(np.float64) - start[k]) ** 2) for k in start))
            assert norm <= 0.05 * 1.001
    if clipping == "fixed":
        def clip(u):
            norm = np.sqrt(sum(np.sum((u[k].astype(np.float64) - start[k]) ** 2) for k in start))
            return {k: start[k] + min(1.0, 0.05 / norm) * (u[k] - start[k]) for k in start}

        clipped = [clip(u) for u in sent]
        resid = np.concatenate([(got[k] - np.mean([c[k] for c in clipped], axis=0)).ravel() for k in start])
        assert resid.std() == pytest.approx(0.8 * 0.05 / 3, rel=0.15)


def _recording_mod(rec):
    def mod(msg, ctx, call_next):
        from fedfingpt.common.adapter import record_to_arrays

        out = call_next(msg, ctx)
        if msg.metadata.message_type == "train" and not out.has_error():
            bank, rnd = int(ctx.node_config["partition-id"]), int(msg.content["config"]["server-round"])
            np.savez(rec / f"in-r{rnd}-b{bank}.npz", **record_to_arrays(msg.content["arrays"]))
            np.savez(rec / f"out-r{rnd}-b{bank}.npz", **record_to_arrays(out.content["arrays"]))
        return out

    return mod


def test_cli_shows_a_ledger_and_refuses_a_damaged_one(tmp_path, capsys):
    from fedfingpt.cli import main

    PrivacyLedger.open(tmp_path, bank=4, accountant_kind="rdp", delta=1e-5).record((1.0, 0.01, 30), run_key="r",
                                                                                   round=1)
    assert main(["privacy", "ledger", str(tmp_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["bank"] == 4 and shown["epsilon"] == pytest.approx(epsilon_of("rdp", [(1.0, 0.01, 30)], 1e-5))
    (tmp_path / "privacy_ledger.json").write_text("{}")
    assert main(["privacy", "ledger", str(tmp_path)]) == 2
    assert "corrupted privacy ledger" in capsys.readouterr().err


class RecordingGrid:
    """Flower's Grid as the ServerApp uses it, keeping every reply the server receives (the test looks inside)."""

    def __init__(self, grid, seen: list) -> None:
        self._grid, self.seen = grid, seen

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, timeout=None):
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.seen.extend(replies)
        return replies

    def pull_messages(self, message_ids):
        replies = list(self._grid.pull_messages(message_ids))
        self.seen.extend(replies)
        return replies


def _payload_arrays(msg) -> list[np.ndarray]:
    """Every array a reply carries: ArrayRecords, and ndarrays serialized as bytes inside ConfigRecords."""
    from flwr.common import bytes_to_ndarray

    out = [a.numpy() for rec in msg.content.array_records.values() for a in rec.values()]
    for rec in msg.content.config_records.values():
        for v in rec.values():
            for b in (v if isinstance(v, list) else [v]):
                if isinstance(b, bytes):
                    try:
                        out.append(bytes_to_ndarray(b))
                    except Exception:  # keys and ciphertexts are not arrays
                        pass
    return out


def test_secure_aggregation_hides_each_update_and_keeps_the_mean(tiny_config, data_dir, tmp_path):
    from safetensors.numpy import load_file

    from fedfingpt.client.secure import SecureBank, make_secure_client_app
    from fedfingpt.simulations.run import simulate

    cfg = tiny_config.model_dump(mode="json")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["federation"] = {"num_banks": 3, "rounds": 1, "local_steps": 2, "min_banks": 3, "client_cpus": 1,
                         "server_eval_limit": 8, "final_eval_full": False, "client_eval": False, "round_timeout_s": 120, "strategy": "fedavg",
                         "partition": {"kind": "dirichlet", "alpha": 0.5, "max_rows": 240, "min_partition_size": 10}}
    cfg["privacy"] = {"secure_aggregation": True, "secagg_max_weight": 200}  # near the banks' sizes: fine quantisation
    cfg = config_from_dict(cfg)
    rec = tmp_path / "rec"
    rec.mkdir()

    class Recorded(SecureBank):  # the bank's update in clear, kept by the test before SecAgg+ masks it
        def fit(self, parameters, config):
            arrays, n, metrics = super().fit(parameters, config)
            np.savez(rec / f"bank-{metrics['bank-id']}.npz", __n=n, *arrays)
            return arrays, n, metrics

    seen: list = []
    out = simulate(cfg, tmp_path / "run", client_app=make_secure_client_app(cfg, bank_cls=Recorded),
                   grid_hook=lambda g: RecordingGrid(g, seen))
    r1 = out["history"][1]["train"]
    assert r1["aggregated"] and r1["secure_aggregation"] and len(r1["banks"]) == 3
    updates = []
    for f in sorted(rec.glob("bank-*.npz")):
        z = np.load(f)
        updates.append(([z[f"arr_{i}"] for i in range(len(z.files) - 1)], float(z["__n"])))
    assert len(updates) == 3
    received = [a for m in seen if not m.has_error() for a in _payload_arrays(m)]
    shapes = {u.shape for u in updates[0][0]}
    assert any(a.shape in shapes for a in received), "the masked vectors were looked at"
    for arrays, _ in updates:  # no bank's array reaches the server in clear
        for u in arrays:
            for a in received:
                if a.shape == u.shape:
                    assert not np.allclose(a.astype(np.float64), u, atol=1e-3)
    # the unmasked aggregate is the example-weighted mean, up to SecAgg+'s quantisation
    w = np.array([n for _, n in updates]) / sum(n for _, n in updates)
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "round-0001" / "adapter_model.safetensors"))
    from fedfingpt.common.adapter import get_lora_arrays
    from fedfingpt.common.models import attach_lora

    loaded = load_base_model(cfg.model)
    names = list(get_lora_arrays(attach_lora(loaded.model, cfg.lora)))
    got = [saved[next(p for p in saved if p.endswith(n.split("base_model.model.", 1)[-1]))] for n in names]
    for i, g in enumerate(got):
        want = sum(wi * u[0][i].astype(np.float64) for wi, u in zip(w, updates))
        np.testing.assert_allclose(g, want, atol=2e-4)
        assert np.abs(want).max() > 0


@pytest.mark.parametrize("strategy", ["median", "trimmed_mean", "norm_bound", "fedex_lora", "hetlora"])
def test_secure_aggregation_refuses_strategies_that_need_updates_in_clear(strategy):
    with pytest.raises(ConfigError, match="secure_aggregation with federation.strategy"):
        check_strategy(config_from_dict({"privacy": {"secure_aggregation": True},
                                         "federation": {"strategy": strategy}}))


def test_secure_aggregation_composes_with_the_default_strategy_and_a_refusal_names_the_ones_that_do():
    # the default strategy (fedavg) needs only the sum, so turning secure aggregation on needs nothing else
    check_strategy(config_from_dict({"privacy": {"secure_aggregation": True}}))
    # norm_bound bounds each update on the server, which secure aggregation hides: the refusal says what to choose
    # instead, and offers only strategies that need the sum alone
    with pytest.raises(ConfigError, match="federation.strategy norm_bound") as err:
        check_strategy(config_from_dict({"privacy": {"secure_aggregation": True},
                                         "federation": {"strategy": "norm_bound"}}))
    offered = str(err.value).split("only the sum:")[1]
    assert "fedavg" in offered and "ffa_lora" in offered
    assert not any(s in offered for s in ("median", "trimmed_mean", "norm_bound", "fedex_lora", "hetlora"))


def test_per_example_gradients_with_the_head_only_at_answer_positions_equal_full_logits(tiny):
    """Opacus's per-example gradients (before clipping and noise) are the same whether the head runs over the whole
    vocabulary at every position or only where the answer is predicted."""
    from fedfingpt.common.train import answer_loss

    model, tok, enc, cfg = tiny
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    samples = []
    for full in (True, False):
        optimizer, _ = make_optimizer(model, cfg.training, 1)
        forward, dp_opt = make_private(model, optimizer, DPSpec(1.0, 1.0, 0.5, 4), torch.Generator().manual_seed(0))
        batch = collate(enc[:5], tok.pad_token_id)
        answer_loss(model, batch, per_example=True, full_logits=full).backward()
        samples.append({n: p.grad_sample.clone() for n, p in model.named_parameters() if p.requires_grad})
        dp_opt.zero_grad(set_to_none=True)
        forward._close()
    assert samples[0] and all(s.shape[0] == 5 for s in samples[0].values())
    for n in samples[0]:
        torch.testing.assert_close(samples[1][n], samples[0][n], rtol=1e-5, atol=1e-7)


def test_a_logical_batch_in_physical_batches_is_one_noisy_step(tiny):
    """The same Poisson batches and noise with the logical batch run whole or in physical batches of 3: the same
    LoRA weights after two steps (the clipped gradients are summed and the noise added once per logical batch;
    a step per physical batch, or noise per physical batch, would differ)."""
    model, tok, enc, cfg = tiny
    start = get_lora_arrays(model)
    tcfg = cfg.training.model_copy(update={"max_steps": 2, "warmup_ratio": 0.0})
    after = {}
    for physical in (None, 3):
        from fedfingpt.common.adapter import set_lora_arrays

        set_lora_arrays(model, start)
        res = train(model, enc, tcfg, pad_id=tok.pad_token_id, progress=False,
                    dp=DPSpec(0.5, 1.0, 12 / 24, 12, physical_batch_size=physical))
        assert res.steps == 2 and res.examples > 6  # two logical batches of about 12
        after[physical] = (get_lora_arrays(model), res.examples)
    assert after[None][1] == after[3][1]
    moved = max(np.abs(after[None][0][k] - start[k]).max() for k in start)
    assert moved > 1e-4
    for k in start:
        np.testing.assert_allclose(after[3][0][k], after[None][0][k], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="grad_accum must be 1 under DP"):
        train(model, enc, tcfg.model_copy(update={"grad_accum": 2}), pad_id=tok.pad_token_id, progress=False,
              dp=DPSpec(0.5, 1.0, 0.5, 12))
