"""Every aggregation strategy runs a 2-round tiny-model federation in Flower's Simulation Engine, and what each
one promises holds there: what travels, what stays at the bank, and (FedEx-LoRA) that the served model carries the
exact mean of the banks' adapted weights."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp

from fedfingpt.client.app import handle_evaluate, handle_train
from fedfingpt.common.runconfig import train_reply
from fedfingpt.common.adapter import arrays_to_record, effective_delta, load_adapter, record_to_arrays
from fedfingpt.common.config import config_from_dict
from fedfingpt.server.strategies import STRATEGY_NAMES
from fedfingpt.common.models import load_base_model
from fedfingpt.server.aggregation import lora_pairs
from fedfingpt.simulations.run import simulate


def strategy_config(tiny_config, data_dir, tmp_path, strategy, **agg):
    cfg = tiny_config.model_dump(mode="json")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["federation"] = {
        "num_banks": 3, "rounds": 2, "local_steps": 2, "min_banks": 3, "client_cpus": 1, "strategy": strategy,
        "aggregation": agg, "server_eval_limit": 8, "final_eval_full": False, "client_eval_limit": 8, "round_timeout_s": 120,
        "partition": {"kind": "dirichlet", "alpha": 0.5, "max_rows": 240, "min_partition_size": 10},
    }
    cfg["output_dir"] = str(tmp_path / "runs")
    return config_from_dict(cfg)


def recording_app(cfg, record_dir: Path) -> ClientApp:
    """Our bank logic; what each bank received and sent is saved for the test."""
    app = ClientApp()

    @app.train()
    def _train(msg, ctx):
        bank, rnd = int(ctx.node_config["partition-id"]), int(msg.content["config"]["global-round"])
        np.savez(record_dir / f"in-r{rnd}-b{bank}.npz", **record_to_arrays(msg.content["arrays"]))
        if "base-residual" in msg.content.array_records:
            np.savez(record_dir / f"res-r{rnd}-b{bank}.npz", **record_to_arrays(msg.content["base-residual"]))
        (record_dir / f"cfg-r{rnd}-b{bank}.json").write_text(json.dumps(dict(msg.content["config"])))
        reply = handle_train(msg, ctx, cfg)
        m = dict(reply.content["metrics"])
        np.savez(record_dir / f"out-r{rnd}-b{bank}.npz", __n=m["num-examples"],
                 **record_to_arrays(reply.content["arrays"]))
        return Message(train_reply(arrays_to_record(record_to_arrays(reply.content["arrays"])), m), reply_to=msg)

    @app.evaluate()
    def _evaluate(msg, ctx):
        return handle_evaluate(msg, ctx, cfg)

    return app


def load(path: Path) -> tuple[dict, float | None]:
    z = np.load(path)
    return {k: z[k] for k in z.files if k != "__n"}, (float(z["__n"]) if "__n" in z.files else None)


AGG = {"fedprox": {"proximal_mu": 0.5}, "hetlora": {"bank_ranks": {0: 2, 1: 3}}, "norm_bound": {"norm_bound_factor": 1.0}}


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_strategy_runs_two_rounds_in_simulation(strategy, tiny_config, data_dir, tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    run_dir = tmp_path / "run"
    cfg = strategy_config(tiny_config, data_dir, tmp_path, strategy, **AGG.get(strategy, {}))
    out = simulate(cfg, run_dir, client_app=recording_app(cfg, rec))
    trains = [h["train"] for h in out["history"] if h.get("train")]
    assert [t["round"] for t in trains] == [1, 2] and all(t["aggregated"] and not t["dropped"] for t in trains)
    assert all(len(t["banks"]) == 3 for t in trains)
    sent, _ = load(rec / "out-r2-b0.npz")
    got, _ = load(rec / "in-r2-b0.npz")
    names = set(sent)
    if strategy == "ffa_lora":
        assert names and all(".lora_B." in k for k in names)
        assert set(got) == names
        assert trains[0]["banks"][0]["bytes_up"] * 2 == pytest.approx(_fedavg_bytes(cfg), rel=0.01)
    elif strategy == "fedsa_lora":
        assert names and all(".lora_A." in k for k in names)
        # each bank keeps its own B on its disk, never sent; the banks' B differ
        bs = [np.load(run_dir / "banks" / f"bank-{b}" / "local_lora_B.npz") for b in range(3)]
        assert all(int(z["__round"]) == 2 for z in bs)
        key = next(k for k in bs[0].files if k != "__round")
        assert not np.allclose(bs[0][key], bs[1][key]) and np.abs(bs[0][key]).max() > 0
        assert trains[1]["client_eval"]["banks"], "each bank scored its own model"
        assert all(not h["eval"] for h in out["history"]), "no single global model to score"
    elif strategy == "hetlora":
        a = next(k for k in sent if ".lora_A." in k)
        assert sent[a].shape[0] == 2 and load(rec / "out-r2-b1.npz")[0][a].shape[0] == 3
        assert load(rec / "out-r2-b2.npz")[0][a].shape[0] == 4 and trains[1]["ranks"] == [2, 3, 4]
    elif strategy == "fedprox":
        assert json.loads((rec / "cfg-r2-b1.json").read_text())["proximal-mu"] == pytest.approx(0.5)
    elif strategy == "norm_bound":
        assert trains[0]["norm_bound"]["bound"] > 0 and len(trains[0]["norm_bound"]["norms"]) == 3
    else:
        assert any(".lora_A." in k for k in names) and any(".lora_B." in k for k in names)
    if strategy == "fedex_lora":
        _check_fedex_served_model(cfg, rec, run_dir)
    assert (run_dir / "checkpoints" / "round-0002").is_dir()


def _fedavg_bytes(cfg) -> int:
    from fedfingpt.common.adapter import get_lora_arrays
    from fedfingpt.common.models import attach_lora

    return sum(v.nbytes for v in get_lora_arrays(attach_lora(load_base_model(cfg.model).model, cfg.lora)).values())


def _check_fedex_served_model(cfg, rec: Path, run_dir: Path) -> None:
    """The served round-2 model (base + saved residual + adapter) adds to each base weight exactly the mean of
    the banks' round-2 adapted weights: residual they trained on + scale·B_i·A_i, weighted by examples."""
    scale = cfg.lora.alpha / cfg.lora.r
    outs = [load(rec / f"out-r2-b{b}.npz") for b in range(3)]
    residual_in = dict(np.load(rec / "res-r2-b0.npz"))
    assert residual_in, "round 2 banks received the round-1 residual"
    w = np.array([n for _, n in outs]) / sum(n for _, n in outs)
    loaded = load_base_model(cfg.model)
    served, _ = load_adapter(loaded.model, run_dir / "checkpoints" / "round-0002", base_sha256=loaded.base_sha256)
    delta = effective_delta(served)
    pairs = lora_pairs(outs[0][0])
    assert set(delta) == set(pairs)
    worst_naive = 0.0
    for prefix, (a, b) in pairs.items():
        exact = residual_in[prefix].astype(np.float64) + scale * sum(
            wi * (u[b].astype(np.float64) @ u[a].astype(np.float64)) for wi, (u, _) in zip(w, outs))
        np.testing.assert_allclose(delta[prefix], exact, atol=1e-5, err_msg=prefix)
        mean_a = sum(wi * u[a] for wi, (u, _) in zip(w, outs))
        mean_b = sum(wi * u[b] for wi, (u, _) in zip(w, outs))
        naive = residual_in[prefix] + scale * (mean_b.astype(np.float64) @ mean_a)
        worst_naive = max(worst_naive, float(np.abs(naive - exact).max()))
    assert worst_naive > 1e-6, "plain averaging would have been inexact here"


def attacking_app(cfg, record_dir: Path, attacker: int, attack: str) -> ClientApp:
    """Honest banks run our logic; bank `attacker` sends its honest update scaled up 50x or sign-flipped 20x."""
    app = ClientApp()

    @app.train()
    def _train(msg, ctx):
        bank = int(ctx.node_config["partition-id"])
        start = record_to_arrays(msg.content["arrays"])
        reply = handle_train(msg, ctx, cfg)
        arrays, m = dict(record_to_arrays(reply.content["arrays"])), dict(reply.content["metrics"])
        np.savez(record_dir / f"honest-b{bank}.npz", __n=m["num-examples"], **arrays)
        if bank == attacker:
            factor = 50.0 if attack == "scaled" else -20.0
            arrays = {k: start[k] + factor * (v - start[k]) for k, v in arrays.items()}
        return Message(train_reply(arrays_to_record(arrays), m), reply_to=msg)

    return app


@pytest.mark.parametrize("strategy,attack", [("norm_bound", "scaled"), ("trimmed_mean", "sign_flipped")])
def test_robust_strategy_keeps_a_malicious_bank_from_steering_the_model(strategy, attack, tiny_config, data_dir,
                                                                        tmp_path):
    from fedfingpt.server.aggregation import weighted_mean

    rec = tmp_path / "rec"
    rec.mkdir()
    cfg = strategy_config(tiny_config, data_dir, tmp_path, strategy, trim_fraction=0.25)
    cfg = cfg.model_copy(update={"federation": cfg.federation.model_copy(update={
        "num_banks": 4, "rounds": 1, "min_banks": 4, "client_eval": False,
        "partition": cfg.federation.partition.model_copy(update={"kind": "iid"})})})
    run_dir = tmp_path / "run"
    simulate(cfg, run_dir, client_app=attacking_app(cfg, rec, attacker=3, attack=attack))
    honest = [load(rec / f"honest-b{b}.npz") for b in range(4)]
    good = weighted_mean([u for u, _ in honest[:3]], [n for _, n in honest[:3]])  # the three honest banks
    from safetensors.numpy import load_file

    saved = load_file(str(run_dir / "checkpoints" / "round-0001" / "adapter_model.safetensors"))
    got = {k: saved[next(p for p in saved if p.endswith(k.split("base_model.model.", 1)[-1]))] for k in good}
    factor = 50.0 if attack == "scaled" else -20.0
    init = {k: v for k, v in _initial(cfg).items() if k in good}
    attacked = [u for u, _ in honest[:3]] + [{k: init[k] + factor * (honest[3][0][k] - init[k]) for k in good}]
    plain = weighted_mean(attacked, [n for _, n in honest])

    def dist(x):
        return float(np.sqrt(sum(np.sum((x[k].astype(np.float64) - good[k]) ** 2) for k in good)))

    step = float(np.sqrt(sum(np.sum((good[k].astype(np.float64) - init[k]) ** 2) for k in good)))
    assert step > 0
    assert dist(plain) > 3 * step, "the attack would steer plain FedAvg"
    assert dist(got) < 0.6 * step, (dist(got), step, dist(plain))


def _initial(cfg) -> dict:
    import torch

    from fedfingpt.common.adapter import get_lora_arrays
    from fedfingpt.common.models import attach_lora

    loaded = load_base_model(cfg.model)
    torch.manual_seed(cfg.training.seed)
    return get_lora_arrays(attach_lora(loaded.model, cfg.lora))


def test_a_federation_started_from_a_saved_adapter_trains_from_it(tiny_config, data_dir, tmp_path):
    """federation.initial_adapter (a public warm start): the banks receive its B in round 1, and under FFA-LoRA,
    whose A never travels, the banks' frozen A is the adapter's A (the final adapter keeps it exactly)."""
    from fedfingpt.common.adapter import get_lora_arrays, save_adapter, set_lora_arrays
    from fedfingpt.common.models import attach_lora
    from fedfingpt.server.checkpoint import latest_checkpoint, peft_names_to_ours

    loaded = load_base_model(tiny_config.model)
    model = attach_lora(loaded.model, tiny_config.lora, seed=tiny_config.training.seed)
    rng = np.random.default_rng(3)
    warm = {k: (0.05 * rng.normal(size=v.shape)).astype(np.float32) for k, v in get_lora_arrays(model).items()}
    set_lora_arrays(model, warm)
    start = save_adapter(model, tmp_path / "warm", base_id=loaded.base_id, base_sha256=loaded.base_sha256)
    cfg = strategy_config(tiny_config, data_dir, tmp_path, "ffa_lora")
    cfg.federation.rounds = 1
    cfg.federation.initial_adapter = str(start)
    record = tmp_path / "record"
    record.mkdir()
    run_dir = tmp_path / "run"
    simulate(cfg, run_dir, client_app=recording_app(cfg, record))
    received, _ = load(record / "in-r1-b0.npz")
    assert received and all(".lora_B." in k for k in received)
    for k, v in received.items():
        np.testing.assert_array_equal(v, warm[k])
    _, _, saved = latest_checkpoint(run_dir, loaded.base_sha256)
    final = peft_names_to_ours(saved, list(warm))
    for k in warm:
        if ".lora_A." in k:
            np.testing.assert_array_equal(final[k], warm[k])
    assert any(not np.allclose(final[k], warm[k]) for k in warm if ".lora_B." in k)
