"""Federated runs through Flower's Simulation Engine with a tiny model: FedAvg exactness, checkpoints and resume,
faulty banks dropped with a reason, the memory check, and the partitioners."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message
from flwr.clientapp import ClientApp

from fedfingpt.client.app import handle_evaluate, handle_train
from fedfingpt.common.runconfig import JOB_KEY, train_reply
from fedfingpt.common.adapter import arrays_to_record, record_to_arrays
from fedfingpt.common.config import config_from_dict
from fedfingpt.server.app import ResumeError
from fedfingpt.server.checkpoint import latest_checkpoint, set_aside_checkpoints
from fedfingpt.simulations.run import SimulationError, check_memory, simulate


def sim_config(tiny_config, data_dir, tmp_path, **federation):
    cfg = tiny_config.model_dump(mode="json")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["federation"] = {
        "num_banks": 3, "rounds": 2, "local_steps": 2, "min_banks": 2, "client_cpus": 1,
        "server_eval_limit": 8, "final_eval_full": False, "client_eval_limit": 8, "round_timeout_s": 120,
        "partition": {"kind": "dirichlet", "alpha": 0.5, "max_rows": 240, "min_partition_size": 10},
        **federation,
    }
    cfg["output_dir"] = str(tmp_path / "runs")
    return config_from_dict(cfg)


def recording_app(cfg, record_dir: str, faults: dict | None = None) -> ClientApp:
    """Our bank logic, plus: every update it sends is saved for the test, and chosen banks misbehave."""
    faults = faults or {}
    app = ClientApp()

    @app.train()
    def _train(msg, ctx):
        bank = int(ctx.node_config["partition-id"])
        fault = faults.get(bank)
        rnd = int(msg.content["config"]["global-round"])
        np.savez(Path(record_dir) / f"in-r{rnd}-b{bank}.npz", **record_to_arrays(msg.content["arrays"]))
        (Path(record_dir) / f"job-r{rnd}-b{bank}.json").write_text(msg.content["config"].get(JOB_KEY, ""))
        if fault == "raise":
            raise RuntimeError("simulated crash inside the bank")
        if fault == "timeout":
            time.sleep(75)  # past the 60 s round timeout, short enough not to hold up shutdown
        reply = handle_train(msg, ctx, cfg)
        arrays = dict(record_to_arrays(reply.content["arrays"]))
        metrics = dict(reply.content["metrics"])
        first = next(iter(arrays))
        if fault == "nan":
            arrays[first] = arrays[first] * np.nan
        elif fault == "shape":
            arrays[first] = arrays[first][:, :-1]
        elif fault == "names":
            arrays["not.a.lora.weight"] = arrays.pop(first)
        elif fault == "count":
            metrics["num-examples"] = 10**12
        np.savez(Path(record_dir) / f"r{rnd}-b{bank}.npz", __n=metrics["num-examples"], **arrays)
        return Message(train_reply(arrays_to_record(arrays), metrics),
                       reply_to=msg)

    @app.evaluate()
    def _evaluate(msg, ctx):
        return handle_evaluate(msg, ctx, cfg)

    return app


def client_updates(record_dir: Path, rnd: int) -> list[tuple[dict, float]]:
    out = []
    for f in sorted(record_dir.glob(f"r{rnd}-b*.npz")):  # what banks sent (in-r* is what they received)
        z = np.load(f)
        out.append(({k: z[k] for k in z.files if k != "__n"}, float(z["__n"])))
    return out


def global_arrays(run_dir: Path, rnd: int) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(run_dir / "checkpoints" / f"round-{rnd:04d}" / "adapter_model.safetensors"))


def match(ours: dict, peft: dict) -> dict:
    return {k: peft[next(p for p in peft if p.endswith(k.split("base_model.model.", 1)[-1]))] for k in ours}


def test_fedavg_round_is_the_weighted_mean_and_a_run_resumes(tiny_config, data_dir, tmp_path, capfd):
    rec = tmp_path / "updates"
    rec.mkdir()
    run_dir = tmp_path / "run"
    cfg1 = sim_config(tiny_config, data_dir, tmp_path, rounds=1, strategy="fedavg", final_eval_full=True)
    simulate(cfg1, run_dir, client_app=recording_app(cfg1, str(rec)))
    console = capfd.readouterr()
    text = console.out + console.err
    # one table: a header, a row for round 0 and round 1, the last round's full-set scores; no Flower chatter
    lines = text.splitlines()
    assert sum("FPB wF1" in ln for ln in lines) == 1, text[-3000:]
    assert [ln.split()[0] for ln in lines if ln[:5].strip().isdigit()] == ["0", "1"], text[-3000:]
    assert "last round on the full test sets: FPB" in text and "(n=1212)" in text
    assert "deprecated" not in text and "configure_train" not in text and "alembic" not in text
    r1 = global_arrays(run_dir, 1)
    assert latest_checkpoint(run_dir, json.loads((run_dir / "checkpoints/round-0001/fedfingpt_manifest.json")
                                                  .read_text())["base_model_sha256"])[0] == 1

    other = sim_config(tiny_config, data_dir, tmp_path, rounds=2, strategy="fedavg", final_eval_full=True,
                       partition={"kind": "iid", "max_rows": 240})
    with pytest.raises(ResumeError, match="federation.partition.kind"):  # refused before any process starts
        simulate(other, run_dir)
    from fedfingpt.server.checkpoint import resume_conflicts

    served = cfg1.model_copy(update={"gate": cfg1.gate.model_copy(update={"min_score": 0.9}),
                                     "serving": cfg1.serving.model_copy(update={"port": 50999})})
    assert resume_conflicts(run_dir, served.training_job()) == []  # serving's sections are not training's
    assert resume_conflicts(run_dir, served.model_dump(mode="json")) == []  # nor in a checkpoint that stored them
    assert resume_conflicts(run_dir, other.training_job())
    manifest = json.loads((run_dir / "checkpoints/round-0001/fedfingpt_manifest.json").read_text())
    assert "gate" not in manifest["config"] and "serving" not in manifest["config"]

    cfg2 = sim_config(tiny_config, data_dir, tmp_path, rounds=2, strategy="fedavg",
                      final_eval_full=True)  # same folder: resumes at round 2
    out = simulate(cfg2, run_dir, client_app=recording_app(cfg2, str(rec)))
    assert [h["round"] for h in out["history"]] == [0, 1, 2]
    np.testing.assert_array_equal(global_arrays(run_dir, 1)["%s" % next(iter(r1))], r1[next(iter(r1))])
    # the resumed round 2 started every bank from the round-1 checkpoint
    for f in rec.glob("in-r2-b*.npz"):
        z = np.load(f)
        for name, want in match({k: z[k] for k in z.files}, r1).items():
            np.testing.assert_array_equal(z[name], want)
    assert len(list(rec.glob("in-r2-b*.npz"))) == 3
    # the scenario came with every message: a bank needs no path to it and no copy of it on its disk
    sent = {json.loads(f.read_text())["federation"]["rounds"] for f in rec.glob("job-r*-b*.json")}
    assert sent == {1, 2} and len(list(rec.glob("job-r2-b*.json"))) == 3
    assert config_from_dict(json.loads((rec / "job-r2-b0.json").read_text())) == cfg2.model_copy(
        update={"serving": type(cfg2.serving)()})

    for rnd in (1, 2):
        updates = client_updates(rec, rnd)
        assert len(updates) == 3, "every bank trained"
        g = match(updates[0][0], global_arrays(run_dir, rnd))
        w = np.array([n for _, n in updates])
        assert len(set(w)) > 1, "Dirichlet banks differ in size, so weighting matters"
        for name in g:
            want = sum(wi * u[name] for (u, _), wi in zip(updates, w / w.sum()))
            np.testing.assert_allclose(g[name], want, atol=1e-6)
    # the global adapter moved away from the initial one (LoRA B starts at zero)
    assert any(np.abs(v).max() > 0 for k, v in global_arrays(run_dir, 2).items() if "lora_B" in k)
    report = json.loads((run_dir / "federated.json").read_text())
    r2 = report["history"][2]["train"]
    assert len(r2["banks"]) == 3 and r2["banks"][0]["bytes_up"] == r2["banks"][0]["bytes_down"] > 0
    md = (run_dir / "report.md").read_text()
    assert "mb_down_per_bank" in md and (run_dir / "accuracy.png").stat().st_size > 1000
    assert (run_dir / "partition.png").is_file() and "negative" in (run_dir / "partition.md").read_text()


def test_faulty_banks_are_dropped_and_the_round_completes(tiny_config, data_dir, tmp_path):
    faults = {2: "raise", 3: "nan", 4: "shape", 5: "names", 6: "count", 7: "timeout"}
    rec = tmp_path / "updates"
    rec.mkdir()
    run_dir = tmp_path / "run"
    cfg = sim_config(tiny_config, data_dir, tmp_path, num_banks=8, rounds=1, round_timeout_s=60, client_eval=False,
                     strategy="fedavg", partition={"kind": "iid", "max_rows": 400})  # checked against the plain mean
    out = simulate(cfg, run_dir, client_app=recording_app(cfg, str(rec), faults))
    r1 = out["history"][1]["train"]
    assert r1["aggregated"] and sorted(b["bank"] for b in r1["banks"]) == [0, 1]
    reasons = " | ".join(d["reason"] for d in r1["dropped"])
    for needle in ("simulated crash", "NaN or Inf", "has shape", "array names differ", "implausible example count",
                   "no reply before the round timeout"):
        assert needle in reasons, reasons
    assert len(r1["dropped"]) == 6
    honest = [(u, n) for u, n in client_updates(rec, 1) if n < 10**6 and all(np.isfinite(v).all() for v in u.values())
              and "not.a.lora.weight" not in u]
    honest = [(u, n) for u, n in honest if all(v.shape == honest[0][0][k].shape for k, v in u.items())]
    g = match(honest[0][0], global_arrays(run_dir, 1))
    w = np.array([n for _, n in honest[:2]])
    for name in g:
        want = sum(wi * u[name] for (u, _), wi in zip(honest[:2], w / w.sum()))
        np.testing.assert_allclose(g[name], want, atol=1e-6)
    assert "Dropped updates" in (run_dir / "report.md").read_text()


def test_too_few_valid_updates_keep_the_global_adapter(tiny_config, data_dir, tmp_path):
    rec = tmp_path / "updates"
    rec.mkdir()
    cfg = sim_config(tiny_config, data_dir, tmp_path, num_banks=2, rounds=1, min_banks=2,
                     partition={"kind": "iid", "max_rows": 120})
    out = simulate(cfg, tmp_path / "run", client_app=recording_app(cfg, str(rec), {1: "nan"}))
    r1 = out["history"][1]["train"]
    assert not r1["aggregated"] and len(r1["dropped"]) == 1
    g = global_arrays(tmp_path / "run", 1)
    assert all(np.abs(v).max() == 0 for k, v in g.items() if "lora_B" in k), "initial adapter kept"


def test_memory_check_refuses_before_starting(tiny_config, data_dir, tmp_path):
    cfg = sim_config(tiny_config, data_dir, tmp_path, num_banks=1000, client_cpus=0.01)
    with pytest.raises(SimulationError, match=r"needs about .* GiB .* available; raise federation.client_cpus"):
        check_memory(cfg)
    assert check_memory(sim_config(tiny_config, data_dir, tmp_path)) > 0


def test_starting_over_sets_earlier_checkpoints_aside(tmp_path):
    (tmp_path / "checkpoints" / "round-0001").mkdir(parents=True)
    aside = set_aside_checkpoints(tmp_path)
    assert aside is not None and (aside / "round-0001").is_dir() and not (tmp_path / "checkpoints").exists()
    assert set_aside_checkpoints(tmp_path) is None
