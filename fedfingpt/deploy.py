"""Thin wrappers over Flower's Deployment Engine for real multi-bank rounds: the coordinator's SuperLink (TLS and
SuperNode authentication), the registration of each bank's public key, a bank's SuperNode with its own node config
(and a long-lived ClientApp process), and `flwr run` of a scenario. Each prints the exact Flower command it runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .common.nodeconfig import NodeConfig, NodeConfigError

REPO = Path(__file__).resolve().parents[1]  # the Flower App: pyproject.toml with [tool.flwr.app]
CONNECTION = "fedfingpt"  # the name of the SuperLink connection in the coordinator's flwr config.toml
NO_RUNTIME_INSTALL = "--disable-runtime-dependency-installation"  # STACK.md: else `flwr run` installs a CUDA torch
INSECURE_WARNING = ("WARNING: --insecure: plaintext HTTP without TLS and without SuperNode authentication; anyone "
                    "on the network can read the adapters and join as a bank. For tests on one machine only.")


class DeployError(Exception):
    """A bad input to a deployment command: the message names the input and the fix."""


# -- inputs ---------------------------------------------------------------------------------------------------------
def flower_bin(name: str) -> str:
    """A Flower executable from this environment (beside this Python), else from PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"`{name}` not found beside {sys.executable} or on PATH: install flwr into this environment")
    return found


def flower_env(home: Path) -> dict:
    """Environment for Flower's processes: their own FLWR_HOME, no telemetry, no update check, this venv first."""
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(Path(home).resolve()), "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})  # also for a SuperLink that flwr starts
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # flower-superexec, flwr-*app
    return env


def require_file(path: str | Path | None, what: str, fix: str) -> Path:
    if not path:
        raise DeployError(f"{what}: not given; {fix}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DeployError(f"{what} {p} does not exist; {fix}")
    return p.resolve()


def check_port_free(host: str, port: int, what: str, flag: str) -> None:
    """Fail before Flower starts (and fails less clearly) when the port is taken."""
    if not 0 < port < 65536:
        raise DeployError(f"{what}: port {port} is not a TCP port (1-65535); pass another {flag}")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Flower's servers do: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError as err:
            raise DeployError(f"{what}: {host}:{port} is in use or not bindable ({err.strerror}); stop what listens "
                              f"there or pass another {flag}") from None


def split_address(address: str, flag: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\]]+?)\]?:(\d+)", address or "")
    if not m:
        raise DeployError(f"{flag} {address!r} is not HOST:PORT (e.g. 127.0.0.1:9092)")
    return m.group(1), int(m.group(2))


def toml_string(value: str) -> str:
    # JSON string escapes (\" \\ \n \uXXXX) are valid TOML basic-string escapes
    return json.dumps(str(value), ensure_ascii=True)


def announce(cmd: list[str], note: str = "") -> None:
    print(f"fedfingpt: running{note}: {shlex.join(cmd)}", file=sys.stderr, flush=True)


def warn_insecure() -> None:
    print(f"fedfingpt: {INSECURE_WARNING}", file=sys.stderr, flush=True)


# -- the coordinator ------------------------------------------------------------------------------------------------
@dataclass
class ServerCerts:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_args(cls, certs_dir: str | None, ca: str | None = None, cert: str | None = None,
                  key: str | None = None) -> "ServerCerts":
        d = Path(certs_dir).expanduser() if certs_dir else None
        fix = ("pass --certs DIR holding ca.pem, server.pem and server.key (`fedfingpt certs dev DIR --host NAME` "
               "makes development ones) or --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile, or --insecure for a "
               "test on one machine")
        return cls(require_file(ca or (d / "ca.pem" if d else None), "CA certificate", fix),
                   require_file(cert or (d / "server.pem" if d else None), "SuperLink certificate", fix),
                   require_file(key or (d / "server.key" if d else None), "SuperLink private key", fix))


def superlink_command(*, host: str, port: int, state_dir: Path, certs: ServerCerts | None,
                      node_auth: bool = True) -> list[str]:
    """flower-superlink with TLS and SuperNode authentication (or --insecure when certs is None); the ServerApp runs
    in a subprocess per run and nothing is installed at run time."""
    cmd = [flower_bin("flower-superlink")]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.cert), "--ssl-keyfile", str(certs.key)]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    cmd += ["--isolation", "subprocess", NO_RUNTIME_INSTALL, "--host", host, "--port", str(port),
            "--database", str(Path(state_dir).resolve() / "state.db")]
    return cmd


def start_superlink(*, host: str, port: int, state_dir: str | Path, certs: ServerCerts | None,
                    node_auth: bool = True, exec_: bool = True, **popen) -> subprocess.Popen | None:
    """Check the inputs, then run the SuperLink (exec_: replace this process, so its PID is the SuperLink's)."""
    check_port_free(host, port, "SuperLink", "--port")
    state = Path(state_dir).expanduser()
    state.mkdir(parents=True, exist_ok=True)
    if certs is None:
        warn_insecure()
    cmd = superlink_command(host=host, port=port, state_dir=state, certs=certs, node_auth=node_auth)
    announce(cmd)
    env = flower_env(state)
    if exec_:
        sys.stdout.flush()
        os.execve(cmd[0], cmd, env)
    return subprocess.Popen(cmd, env=env, **popen)


def write_connection(home: str | Path, superlink: str, ca: str | Path | None, insecure: bool = False) -> Path:
    """The coordinator's flwr config.toml (in its own FLWR_HOME) with one connection to the SuperLink."""
    split_address(superlink, "--superlink")
    home = Path(home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f"default = {toml_string(CONNECTION)}", "", f"[superlink.{CONNECTION}]",
             f"address = {toml_string(superlink)}"]
    if insecure:
        warn_insecure()
        lines.append("insecure = true")
    else:
        ca = require_file(ca, "CA certificate (--ca)", "pass the CA that signed the SuperLink's certificate, or "
                          "--insecure for a SuperLink started with --insecure")
        lines.append(f"root-certificates = {toml_string(ca)}")
    path = home / "config.toml"
    tmp = path.with_name(".config.toml.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def flwr(home: str | Path, args: list[str], *, check: bool = True, capture: bool = True,
         timeout: float | None = 120, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI against the coordinator's connection."""
    cmd = [flower_bin("flwr"), *args]
    if not quiet:
        announce(cmd)
    res = subprocess.run(cmd, env=flower_env(Path(home)), capture_output=capture, text=True, timeout=timeout,
                         check=False)
    if check and res.returncode != 0:
        out = ((res.stdout or "") + (res.stderr or "")).strip()
        raise DeployError(f"`flwr {' '.join(args[:2])}` failed (exit {res.returncode}): {out[-1500:]}")
    return res


def _json_tail(text: str) -> dict:
    """The JSON object `flwr ... --format json` prints (after any banner lines)."""
    start = text.find("{")
    if start < 0:
        raise DeployError(f"flwr printed no JSON: {text[-500:]}")
    return json.loads(text[start:])


def register_banks(home: str | Path, public_keys: list[str | Path]) -> dict[str, int]:
    """Register each bank's public key with the SuperLink (`flwr supernode register`): name -> SuperNode id."""
    ids = {}
    for pub in public_keys:
        p = require_file(pub, "bank public key", "pass the .pub file the bank made with `fedfingpt deploy keys`")
        name = p.stem
        res = flwr(home, ["supernode", "register", str(p), CONNECTION, "--name", name, "--format", "json"],
                   check=False)
        out = (res.stdout or "") + (res.stderr or "")
        if res.returncode != 0 or '"success": true' not in out:
            raise DeployError(f"registering {p} failed (exit {res.returncode}): {out.strip()[-800:]}; a key already "
                              "registered is refused: `flwr supernode list` shows the federation")
        ids[name] = int(_json_tail(out)["node-id"])
    return ids


def online_banks(home: str | Path, quiet: bool = False) -> list[str]:
    """SuperNode ids the SuperLink sees online now (`flwr supernode list`)."""
    res = flwr(home, ["supernode", "list", CONNECTION, "--format", "json"], check=False, quiet=quiet)
    try:
        listing = _json_tail(res.stdout or "")
    except (DeployError, ValueError):
        listing = {}
    if not listing.get("success"):
        raise DeployError(f"cannot list the SuperLink's SuperNodes: {listing.get('error-message') or res.stderr}; "
                          "check --superlink, --ca and that the SuperLink runs")
    return [n["node-id"] for n in listing.get("nodes", []) if n.get("status") == "online"]


def wait_for_banks(home: str | Path, n: int, timeout_s: float) -> list[str]:
    """Ask every 2 s until `n` banks are online or `timeout_s` has passed; the ids online at the end."""
    end = time.monotonic() + timeout_s
    first = True
    while True:
        online = online_banks(home, quiet=not first)
        first = False
        if len(online) >= n or time.monotonic() > end:
            return online
        time.sleep(2)


def run_config_file(cfg, run_dir: str | Path, path: str | Path) -> Path:
    """The run config for `flwr run`: the whole scenario as JSON (every bank reads the same one, wherever it runs),
    and the coordinator's run folder (checkpoints and reports; a second run there resumes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (f"config-json = {toml_string(json.dumps(cfg.model_dump(mode='json')))}\n"
            f"run-dir = {toml_string(Path(run_dir).resolve())}\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def run_command(run_config: Path, stream: bool = True) -> list[str]:
    return [flower_bin("flwr"), "run", str(REPO), CONNECTION, *(["--stream"] if stream else []),
            "--run-config", str(run_config)]


RUN_ID = re.compile(r"Successfully started run (\d+)")


# -- a bank ---------------------------------------------------------------------------------------------------------
def node_config(bank_id: int, num_banks: int | None, *, data_dir: str | None = None,
                privacy_epsilon: float | None = None, lora_rank: int | None = None, extra_train: str | None = None,
                state_dir: str | None = None, bank_data: str | None = None, label_map: str | None = None,
                accept_skips: bool = False, scrub: str | None = None) -> str:
    """The SuperNode's node config (common/nodeconfig.py), checked on this machine: its folders and files exist.
    A bank with its own folder (--bank-data) is no partition and needs no --num-banks."""
    if bank_data is not None:
        d = Path(bank_data).expanduser()
        if not d.is_dir():
            raise DeployError(f"--bank-data {d} is not a folder; pass the folder holding this bank's files "
                              "(docs/bank-data.md) and check it first with `fedfingpt data check`")
        bank_data = str(d.resolve())
    elif num_banks is None:
        raise DeployError("give --bank-data (this bank's own data folder) or, to train on a partition of the public "
                          "sets as the simulation does, --num-banks")
    if bank_id < 0 or (num_banks is not None and (num_banks < 1 or bank_id >= num_banks)):
        raise DeployError(f"--bank-id {bank_id} must be between 0 and --num-banks - 1 ({(num_banks or 1) - 1})")
    if data_dir is not None:
        d = Path(data_dir).expanduser()
        if not d.is_dir():
            raise DeployError(f"--data-dir {d} is not a folder; pass the folder holding this bank's data")
        data_dir = str(d.resolve())
    if privacy_epsilon is not None and not 0 < privacy_epsilon <= 100:
        raise DeployError(f"--privacy-epsilon {privacy_epsilon:g} must be > 0 and at most 100")
    if lora_rank is not None and lora_rank < 1:
        raise DeployError(f"--lora-rank {lora_rank} must be at least 1")
    if extra_train is not None:
        extra_train = str(require_file(extra_train, "--extra-train", "pass this bank's instruction JSONL"))
    if state_dir is not None:
        state_dir = str(Path(state_dir).expanduser().resolve())
    try:
        return NodeConfig(bank_id, num_banks or bank_id + 1, data_dir=data_dir, privacy_epsilon=privacy_epsilon,
                          lora_rank=lora_rank, extra_train=extra_train, state_dir=state_dir, bank_data=bank_data,
                          label_map=label_map, accept_skips=accept_skips, scrub=scrub).to_flower()
    except NodeConfigError as err:
        raise DeployError(str(err)) from None


def supernode_command(*, superlink: str, node_cfg: str, runtime_host: str, runtime_port: int,
                      ca: Path | None, key: Path | None, isolation: str = "process",
                      max_wait_s: float | None = None) -> list[str]:
    """flower-supernode: TLS to the SuperLink (ca) and authentication with the bank's key, or --insecure (ca None)."""
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink]
    if ca is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(ca)]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(key)]
    # flower-supernode installs nothing at run time unless given --allow-runtime-dependency-installation (never here)
    cmd += ["--isolation", isolation, "--host", runtime_host, "--port", str(runtime_port), "--node-config", node_cfg]
    if max_wait_s is not None:
        cmd += ["--max-wait-time", str(max_wait_s)]
    return cmd


def worker_command(runtime_address: str, parent_pid: int | None = None, timings: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "fedfingpt", "deploy", "worker", "--runtime-api-address", runtime_address]
    if parent_pid:
        cmd += ["--parent-pid", str(parent_pid)]
    if timings:
        cmd += ["--timings", str(timings)]
    return cmd


REFUSED = "Failed to activate SuperNode"  # Flower's SuperNode, when the SuperLink will not activate its key
RETRY_S = 5.0


def run_supernode(*, superlink: str, bank_id: int, num_banks: int | None, ca: str | None, key: str | None,
                  insecure: bool = False, runtime_port: int = 9094, runtime_host: str = "127.0.0.1",
                  isolation: str = "process", state_dir: str | None = None, data_dir: str | None = None,
                  privacy_epsilon: float | None = None, lora_rank: int | None = None, extra_train: str | None = None,
                  max_wait_s: float | None = None, timings: str | None = None, rejoin_wait_s: float = 120.0,
                  bank_data: str | None = None, label_map: str | None = None, accept_skips: bool = False,
                  scrub: str | None = None) -> int:
    """Start the bank's SuperNode (and, in process isolation, its long-lived ClientApp worker), forward their output,
    and stop both when either ends or this process is asked to stop. Returns an exit code.

    A SuperNode whose key the SuperLink will not activate is started again every few seconds for `rejoin_wait_s`:
    after a crash, Flower 1.41's SuperLink refuses the same key until it has marked the node offline (two missed
    30 s heartbeats); an unregistered key stays refused, and then this says so."""
    split_address(superlink, "--superlink")
    if insecure:
        warn_insecure()
        ca_path = key_path = None
    else:
        ca_path = require_file(ca, "CA certificate (--ca)", "pass the CA that signed the SuperLink's certificate "
                               "(the coordinator's ca.pem), or --insecure for a SuperLink started with --insecure")
        key_path = require_file(key, "bank private key (--key)", f"make one with `fedfingpt deploy keys --bank-id "
                                f"{bank_id}` and send its .pub to the coordinator to register")
        from .common.certs import read_node_public_key

        try:
            read_node_public_key(key_path)
        except (ValueError, TypeError) as err:
            raise DeployError(f"--key {key_path} is not a usable SuperNode key ({err}); make one with `fedfingpt "
                              f"deploy keys --bank-id {bank_id}`") from None
    state = Path(state_dir or Path("runs") / "deploy" / f"bank-{bank_id}").expanduser().resolve()
    cfg = node_config(bank_id, num_banks, data_dir=data_dir, privacy_epsilon=privacy_epsilon, lora_rank=lora_rank,
                      extra_train=extra_train, state_dir=str(state), bank_data=bank_data, label_map=label_map,
                      accept_skips=accept_skips, scrub=scrub)
    check_port_free(runtime_host, runtime_port, f"bank {bank_id}'s SuperNode Runtime API", "--runtime-port")
    state.mkdir(parents=True, exist_ok=True)
    cmd = supernode_command(superlink=superlink, node_cfg=cfg, runtime_host=runtime_host, runtime_port=runtime_port,
                            ca=ca_path, key=key_path, isolation=isolation, max_wait_s=max_wait_s)
    env = flower_env(state / "flwr-home")
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = node = None
    t_start = time.monotonic()
    refused = threading.Event()
    try:
        if isolation == "process":
            wcmd = worker_command(f"{runtime_host}:{runtime_port}", os.getpid(), timings)
            announce(wcmd, " (the long-lived ClientApp process)")
            worker = subprocess.Popen(wcmd, env=env)
        while not stop.is_set():
            refused.clear()
            announce(cmd)
            node = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    bufsize=1)
            forwarder = threading.Thread(target=_forward, args=(node, refused), daemon=True)
            forwarder.start()
            while not stop.is_set() and node.poll() is None and (worker is None or worker.poll() is None):
                stop.wait(0.5)
            if stop.is_set() or node.poll() is None:  # asked to stop, or the worker ended
                break
            forwarder.join(5)
            if not refused.is_set() or time.monotonic() - t_start + RETRY_S > rejoin_wait_s:
                break
            print(f"fedfingpt: the SuperLink refused bank {bank_id}'s SuperNode; trying again in {RETRY_S:.0f} s "
                  "(after a crash it is refused until the SuperLink marks it offline, about a minute)",
                  file=sys.stderr, flush=True)
            stop.wait(RETRY_S)
    finally:
        for p in (node, worker):
            if p is not None:
                _terminate(p)
        for s, h in old.items():
            signal.signal(s, h)
    if stop.is_set():
        return 0
    if refused.is_set():
        pub = read_node_public_key(key_path) if key_path else ""
        print(f"fedfingpt: error: the SuperLink at {superlink} refused bank {bank_id}: its public key is not "
              f"registered there (or the node still counts as online). Send "
              f"{Path(key_path).with_suffix('.pub') if key_path else 'the .pub file'} to the coordinator, who runs "
              f"`fedfingpt deploy register BANK.pub --superlink ...`; the key is:\n  {pub}", file=sys.stderr)
        return 3
    if worker is not None and worker.returncode not in (None, 0):
        print(f"fedfingpt: error: bank {bank_id}'s ClientApp worker exited with {worker.returncode}",
              file=sys.stderr)
        return worker.returncode
    return node.returncode if node is not None and node.returncode is not None else 0


def _forward(proc: subprocess.Popen, refused: threading.Event) -> None:
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if REFUSED in line:
            refused.set()


def _terminate(p: subprocess.Popen, grace_s: float = 10.0) -> None:
    if p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(grace_s)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# -- a run ----------------------------------------------------------------------------------------------------------
def run_federation(cfg, *, superlink: str, ca: str | None, insecure: bool = False, home: str | Path,
                   run_dir: str | Path | None = None, wait_banks: int | None = None, wait_s: float = 300.0,
                   stream: bool = True, timeout_s: float | None = None) -> tuple[int, int | None]:
    """`flwr run` of the scenario `cfg` on the SuperLink, after waiting (up to wait_s) until `wait_banks` banks
    (default: federation.num_banks) are online. Returns (exit code, run id)."""
    home = Path(home).expanduser()
    write_connection(home, superlink, ca, insecure)
    run_dir = Path(run_dir or Path(cfg.output_dir) / cfg.name).expanduser().resolve()
    rc_file = run_config_file(cfg, run_dir, home / "runs" / f"{cfg.name}.toml")
    want = cfg.federation.num_banks if wait_banks is None else wait_banks
    if want > 0:
        online = wait_for_banks(home, want, wait_s)
        if len(online) < want:
            print(f"fedfingpt: {len(online)} of {want} banks online after {wait_s:.0f} s; starting anyway (a round "
                  f"needs federation.min_banks = {cfg.federation.min_banks})", file=sys.stderr)
    cmd = run_command(rc_file, stream)
    announce(cmd)
    proc = subprocess.Popen(cmd, cwd=REPO, env=flower_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    run_id = None
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if run_id is None and (m := RUN_ID.search(line)):
                run_id = int(m.group(1))
            if deadline and time.monotonic() > deadline:
                break
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            _terminate(proc)
    code = proc.returncode
    if run_id is not None:  # the log stream ending says nothing of how the run ended: ask the SuperLink
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        status, details = wait_run_finished(home, run_id, left)
        if status != "finished:completed":
            print(f"fedfingpt: run {run_id} did not complete: status {status} ({details}); the ServerApp's log is "
                  f"the SuperLink's; running the same scenario again resumes from its last checkpoint",
                  file=sys.stderr)
            code = code or 1
    print(f"fedfingpt: run {run_id} ended (exit {code}); report in {run_dir}", file=sys.stderr)
    return code, run_id


def run_status(home: str | Path, run_id: int) -> tuple[str, str]:
    """(status, status details) of a run as the SuperLink has it (`flwr ls --run-id`), e.g. ('finished:completed',
    'N/A'), ('finished:failed', ...) or ('running', 'N/A')."""
    res = flwr(home, ["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], check=False, quiet=True)
    try:
        runs = _json_tail(res.stdout or "").get("runs") or []
    except (DeployError, ValueError):
        runs = []
    if not runs:
        return "unknown", ((res.stdout or "") + (res.stderr or "")).strip()[-300:] or "flwr ls printed nothing"
    return str(runs[0].get("status")), str(runs[0].get("status-details"))


def wait_run_finished(home: str | Path, run_id: int, timeout_s: float | None, poll_s: float = 5.0) -> tuple[str, str]:
    """Ask until the run has finished (Flower's log stream can end before the run does) or `timeout_s` passed."""
    end = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status, details = run_status(home, run_id)
        if status.startswith("finished") or status == "unknown" or (end is not None and time.monotonic() > end):
            return status, details
        time.sleep(poll_s)


def stop_run(run_id: int, *, superlink: str, ca: str | None, insecure: bool, home: str | Path) -> None:
    """`flwr stop`: the ServerApp ends; `fedfingpt deploy run` with the same scenario later resumes from the last
    checkpoint in the run folder."""
    write_connection(home, superlink, ca, insecure)
    flwr(home, ["stop", str(run_id), CONNECTION])


def serve_worker(runtime_api_address: str, parent_pid: int | None = None, timings: str | None = None,
                 poll_s: float = 0.2) -> int:
    from flwr.supercore.app_utils import start_parent_process_monitor

    from .client.worker import ClientAppWorker

    if parent_pid:
        start_parent_process_monitor(parent_pid)  # a worker never outlives its SuperNode wrapper
    worker = ClientAppWorker(runtime_api_address, poll_s=poll_s, timings_path=timings)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    worker.serve()
    return 0


# -- a whole federation on one machine (tests, benchmarks) ----------------------------------------------------------
def start_process(cmd: list[str], log: str | Path, env: dict | None = None, nice: int = 0) -> subprocess.Popen:
    """A process in its own session and group (everything it starts is stopped with it), output appended to `log`,
    at niceness `nice` (inherited by what it starts)."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})}, preexec_fn=(lambda: os.nice(nice)) if nice else None)


def stop_process(proc: subprocess.Popen, grace_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop the process group of `proc` (which start_process made): `sig`, then SIGKILL after the grace period."""
    for s, wait in ((sig, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone: stop what is left of its group (flower-superexec, the worker)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
