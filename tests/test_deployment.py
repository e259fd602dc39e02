"""Flower's Deployment Engine with real processes on 127.0.0.1: a SuperLink with TLS and SuperNode authentication,
three banks' SuperNodes (long-lived ClientApp workers) and `flwr run`, all started through `fedfingpt deploy`, each
in its own process group, bounded in time and stopped by PID."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from fedfingpt import deploy
from fedfingpt.cli import main as cli
from fedfingpt.common.certs import make_dev_certs, make_node_key_pair
from fedfingpt.deploy import free_port, start_process, stop_process
from loopback import LoopbackFederation  # tests/loopback.py

FEDFINGPT = [sys.executable, "-m", "fedfingpt"]
BANKS = 3


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def scenario(fed: LoopbackFederation, name: str, **federation) -> Path:
    cfg = {
        "name": name, "output_dir": str(fed.root / "runs"),
        "model": {"base": "tiny-random", "cache_dir": os.environ["FEDFINGPT_TEST_CACHE"]},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"tasks": ["sentiment"], "max_length": 96, "eval_limit": 8, "data_dir": str(fed.data_dir)},
        "training": {"batch_size": 4, "lr": 1e-2, "bf16_autocast": False, "warmup_ratio": 0.0},
        "eval": {"batch_size": 8, "bf16_autocast": False},
        "federation": {"num_banks": BANKS, "rounds": 2, "local_steps": 1, "min_banks": 2, "server_eval_limit": 4, "final_eval_full": False,
                       "server_eval_sets": ["fpb"], "client_eval": False, "round_timeout_s": 60,
                       "partition": {"kind": "iid", "max_rows": 90}, **federation},
    }
    path = fed.root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def report(fed: LoopbackFederation, name: str) -> dict:
    return json.loads((fed.root / "runs" / name / "federated.json").read_text())


@pytest.fixture(scope="module")
def federation(tmp_path_factory, data_dir):
    """The coordinator's SuperLink (TLS, node authentication) with three banks' keys registered; no bank yet."""
    fed = LoopbackFederation(tmp_path_factory.mktemp("deploy"), BANKS, data_dir,
                                    bank_env={"OMP_NUM_THREADS": "1"})
    try:
        fed.start_superlink()
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="module")
def banks(federation):
    """Three banks' SuperNodes, each with its long-lived ClientApp worker, online at the SuperLink."""
    for b in range(BANKS):
        federation.start_bank(b)
    wait_for(lambda: len(federation.online()) == BANKS, 120, "three banks online", every_s=2)
    return federation


def _banks_per_round(report: dict) -> dict[int, list]:
    return {h["round"]: sorted(b["bank"] for b in h["train"]["banks"]) for h in report["history"] if h["train"]}


# -- no banks needed -------------------------------------------------------------------------------------------------
def test_node_keys_are_private_and_kept(tmp_path):
    key, pub = make_node_key_pair(tmp_path, "bank-4")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(FileExistsError, match="--force"):
        make_node_key_pair(tmp_path, "bank-4")
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_inputs_are_named(tmp_path, capsys):
    make_dev_certs(tmp_path / "certs")
    with socket.socket() as taken:  # a port in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli(["deploy", "superlink", "--certs", str(tmp_path / "certs"), "--port", str(port)]) == 2
        assert f"127.0.0.1:{port} is in use" in capsys.readouterr().err
    assert cli(["deploy", "superlink", "--certs", str(tmp_path / "missing")]) == 2
    assert "missing/ca.pem does not exist" in capsys.readouterr().err
    assert cli(["deploy", "supernode", "--bank-id", "0", "--num-banks", "3", "--ca", str(tmp_path / "certs/ca.pem"),
                "--key", str(tmp_path / "bank-0.key")]) == 2
    assert "bank-0.key does not exist; make one with `fedfingpt deploy keys --bank-id 0`" in capsys.readouterr().err
    assert cli(["deploy", "supernode", "--bank-id", "0", "--num-banks", "3", "--key", "x"]) == 2
    assert "CA certificate (--ca): not given" in capsys.readouterr().err
    assert cli(["deploy", "supernode", "--bank-id", "3", "--num-banks", "3", "--insecure"]) == 2
    err = capsys.readouterr().err
    assert "WARNING: --insecure" in err and "--bank-id 3 must be between 0 and" in err


def test_commands_say_what_flower_runs(tmp_path):
    make_dev_certs(tmp_path)
    certs = deploy.ServerCerts.from_args(str(tmp_path))
    link = deploy.superlink_command(host="127.0.0.1", port=9092, state_dir=tmp_path, certs=certs)
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation", "--ssl-certfile"} <= set(link)
    assert "--insecure" not in link
    assert "--insecure" in deploy.superlink_command(host="h", port=1, state_dir=tmp_path, certs=None)
    cfg = deploy.node_config(1, 3, data_dir=str(tmp_path), privacy_epsilon=8, lora_rank=2, state_dir=str(tmp_path))
    from flwr.common.config import parse_config_args

    assert parse_config_args([cfg]) == {"bank-id": 1, "num-partitions": 3, "data-dir": str(tmp_path.resolve()),
                                        "privacy-epsilon": 8.0, "lora-rank": 2, "state-dir": str(tmp_path.resolve())}
    node = deploy.supernode_command(superlink="a:1", node_cfg=cfg, runtime_host="127.0.0.1", runtime_port=2,
                                    ca=certs.ca, key=tmp_path / "k")
    assert node[node.index("--auth-supernode-private-key") + 1] == str(tmp_path / "k")
    assert "--allow-runtime-dependency-installation" not in node and "--insecure" not in node


def test_superlink_error_for_a_dead_bank_names_that_bank():
    """When a SuperNode stops sending heartbeats, the SuperLink answers for it (from node 1, the SuperLink): the round
    report names the bank's node, once, with Flower's reason."""
    import numpy as np
    from flwr.app import ConfigRecord, Message
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
    from flwr.supercore.task_identity import TaskIdentity

    from fedfingpt.common.adapter import arrays_to_record
    from fedfingpt.common.config import config_from_dict
    from fedfingpt.common.runconfig import train_reply
    from fedfingpt.server.strategies import build_strategy

    class Nodes:
        def get_node_ids(self):
            return [11, 12, 13]

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    cfg = config_from_dict({"lora": {"r": 2, "alpha": 4}})
    strategy = build_strategy(cfg, min_train_nodes=2, min_available_nodes=2, fraction_evaluate=0.0,
                              min_valid_updates=2)
    ref = {"m.lora_A.weight": np.ones((2, 3), np.float32), "m.lora_B.weight": np.zeros((3, 2), np.float32)}
    msgs = sorted(strategy.configure_train(1, arrays_to_record(ref), ConfigRecord({}), Nodes()),
                  key=lambda m: m.metadata.dst_node_id)
    for m in msgs:  # what the Grid does when it sends them
        m.metadata.__dict__["_message_id"] = m.object_id
    replies = [Message(train_reply(arrays_to_record(ref), {"num-examples": 5, "bank-id": i}), reply_to=m)
               for i, m in enumerate(msgs[:2])]
    replies.append(create_message_error_unavailable_res_message(msgs[2].metadata, "node_unavail"))
    arrays, _ = strategy.aggregate_train(1, replies)
    entry = strategy.rounds[-1]
    assert arrays is not None and [b["bank"] for b in entry["banks"]] == [0, 1]
    assert [d["node_id"] for d in entry["dropped"]] == [13]
    assert "Node Unavailable" in entry["dropped"][0]["reason"]



def test_serverapp_asks_again_when_the_superlink_answers_500(monkeypatch):
    """Flower's Grid gives up at once on an HTTP 500 (seen: the SuperLink's SQLite 'database is locked' under load),
    which ended the run; our ServerApp asks again a bounded number of times, and only on server errors."""
    import httpx

    from fedfingpt.server import app as server_app

    monkeypatch.setattr(server_app.time, "sleep", lambda s: None)

    def status_error(code):
        req = httpx.Request("POST", "https://127.0.0.1/v1/runtime/pull-messages")
        return httpx.HTTPStatusError("boom", request=req, response=httpx.Response(code, request=req))

    class FlakyGrid:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), []

        def pull_messages(self, message_ids):
            self.calls.append(list(message_ids))
            if self.errors:
                raise self.errors.pop(0)
            return ["reply"]

        def send_and_receive(self, ids):  # as Flower's: through self.pull_messages
            return self.pull_messages(ids)

    grid = server_app.retry_transient_pulls(FlakyGrid([status_error(500), status_error(500)]))
    assert grid.send_and_receive(iter(["m1", "m2"])) == ["reply"]
    assert grid.calls == [["m1", "m2"]] * 3  # the same ids each time, though given as an iterator
    forbidden = server_app.retry_transient_pulls(FlakyGrid([status_error(403)]))
    with pytest.raises(httpx.HTTPStatusError):
        forbidden.send_and_receive(["m1"])
    assert len(forbidden.calls) == 1  # a client error is not retried
    down = server_app.retry_transient_pulls(FlakyGrid([status_error(500)] * 10), tries=3)
    with pytest.raises(httpx.HTTPStatusError):
        down.send_and_receive(["m1"])
    assert len(down.calls) == 3  # bounded

def test_unregistered_key_is_refused(federation, tmp_path):
    key, _ = make_node_key_pair(tmp_path, "stranger")
    proc = start_process([*FEDFINGPT, "deploy", "supernode", "--bank-id", "0", "--num-banks", "3", "--superlink",
                  federation.address, "--ca", str(federation.certs["ca.pem"]), "--key", str(key), "--isolation",
                  "subprocess", "--runtime-port", str(free_port()), "--state-dir", str(tmp_path / "state"),
                  "--rejoin-wait-s", "0"], tmp_path / "stranger.log")
    try:
        proc.wait(90)
    finally:
        stop_process(proc)
    out = (tmp_path / "stranger.log").read_text()
    assert proc.returncode == 3, out[-3000:]
    assert "Failed to activate SuperNode" in out  # Flower's SuperNode
    assert "refused bank 0: its public key is not registered" in out  # ours, naming the fix
    link_log = (federation.root / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in link_log  # Flower's SuperLink



def test_a_failed_serverapp_is_a_failed_run(federation):
    """Flower's log stream ends when the run ends, however it ended, and `flwr run --stream` then exits 0; `deploy
    run` asks the SuperLink for the run's status and fails when the run did not complete."""
    path = scenario(federation, "broken-server")
    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["base"] = str(federation.root / "no-such-model")  # valid config; the ServerApp cannot load it
    path.write_text(yaml.safe_dump(cfg))
    code, out = federation.run(path, timeout_s=240)
    assert "Successfully started run" in out, out[-3000:]
    assert code != 0, out[-3000:]
    assert "did not complete: status finished:failed" in out, out[-3000:]

# -- three banks -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_rounds_over_tls_with_node_auth(banks):
    code, out = banks.run(scenario(banks, "tls-auth"), timeout_s=240)
    assert code == 0, out[-4000:]
    rep = report(banks, "tls-auth")
    assert _banks_per_round(rep) == {1: [0, 1, 2], 2: [0, 1, 2]}
    assert all(not h["train"]["dropped"] for h in rep["history"][1:])
    assert "Successfully started run" in out
    # the long-lived workers served the second round without starting anything
    assert all(b["startup_s"] < 5 for b in rep["history"][2]["train"]["banks"])


@pytest.mark.slow
def test_stopped_serverapp_resumes_from_its_checkpoint(banks):
    path = scenario(banks, "resume", rounds=3)
    log = path.with_suffix(".log")
    first = banks.start_run(path, log)
    try:
        def round_one_reported():
            p = banks.root / "runs" / "resume" / "federated.json"
            return p.is_file() and any(h["round"] == 1 for h in json.loads(p.read_text())["history"])

        wait_for(round_one_reported, 240, "round 1 in the report")
        run_id = int(deploy.RUN_ID.search(log.read_text()).group(1))
        assert cli(["deploy", "stop", str(run_id), "--superlink", banks.address, "--ca", str(banks.ca),
                    "--home", str(banks.home)]) == 0
        first.wait(60)
    finally:
        stop_process(first)
    done = report(banks, "resume")["history"]
    assert done[-1]["round"] < 3, "the run finished before it was stopped"
    code, out = banks.run(path, timeout_s=240)
    assert code == 0, out[-4000:]
    assert re.search(r"resuming from \S+/resume/checkpoints: round [12] of 3 done", out), out[-3000:]
    history = report(banks, "resume")["history"]
    assert [h["round"] for h in history] == [0, 1, 2, 3]
    assert history[1] == done[1]  # round 1 kept from the first run, not trained again


@pytest.mark.slow
def test_killed_bank_does_not_stall_the_run_and_rejoins(banks):
    path = scenario(banks, "fault", rounds=6, round_timeout_s=30)
    log2 = banks.root / "bank-2.log"
    seen = log2.stat().st_size
    run = banks.start_run(path, path.with_suffix(".log"))
    try:
        # kill bank 2 (SuperNode and worker) the moment its first training message of this run arrives
        wait_for(lambda: "Receiving: train message" in log2.read_text()[seen:], 240, "bank 2's first train message")
        stop_process(banks.banks[2], sig=signal.SIGKILL)
        banks.start_bank(2)  # it is refused until the SuperLink marks the dead node offline, then rejoins
        run.wait(400)
    finally:
        stop_process(run)
    out = path.with_suffix(".log").read_text()
    assert run.returncode == 0, out[-4000:]
    rep = report(banks, "fault")
    per_round = _banks_per_round(rep)
    assert per_round[1] == [0, 1]
    dropped = rep["history"][1]["train"]["dropped"]
    assert [d["node_id"] for d in dropped] == [banks.node_ids["bank-2"]] and dropped[0]["reason"]
    assert per_round[6] == [0, 1, 2], per_round  # back in a later round
    assert f"node {banks.node_ids['bank-2']}" in (banks.root / "runs" / "fault" / "report.md").read_text()
