"""`flwr run . local` runs our Flower App unchanged (real SuperLink process on 127.0.0.1, stopped by PID)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_flwr_run_local_runs_the_app(tiny_config, data_dir, tmp_path):
    cfg = tiny_config.model_dump(mode="json")
    cfg["name"] = "flwr-run"
    cfg["output_dir"] = str(tmp_path / "runs")
    cfg["data"]["data_dir"] = str(data_dir)
    cfg["federation"] = {"num_banks": 2, "rounds": 2, "local_steps": 1, "min_banks": 2, "server_eval_limit": 4, "final_eval_full": False,
                         "client_eval_limit": 4, "partition": {"kind": "iid", "max_rows": 80}}
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "VENV": str(Path(sys.executable).parent.parent)}
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "flwr_run_local.sh"), "2", "--run-config", f'config-file="{scenario}"'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # bounded in time: stop the whole process group we started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    report = json.loads((tmp_path / "runs" / "flwr-run" / "federated.json").read_text())
    assert [h["round"] for h in report["history"]] == [0, 1, 2]
    assert all(len(h["train"]["banks"]) == 2 for h in report["history"][1:])
    # the script stopped its SuperLink: nothing of ours still listens on the SuperLink's port
    link_db = str(tmp_path / "flwr-home")
    left = subprocess.run(["pgrep", "-f", link_db], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left running: {left}"
