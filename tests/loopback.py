"""A whole federation on 127.0.0.1 for tests and benchmarks: a SuperLink and registered banks' SuperNodes, each
started through `fedfingpt deploy` in its own process group, stopped by process id on close."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from fedfingpt.common.certs import make_dev_certs, make_node_key_pair
from fedfingpt.deploy import (DeployError, free_port, online_banks, register_banks, start_process, stop_process,
                              wait_for_banks, write_connection)


class LoopbackFederation:
    """A SuperLink with TLS and SuperNode authentication (development certificates) and `num_banks` registered
    banks' SuperNodes on 127.0.0.1, each started through `fedfingpt deploy` in its own process group under `root`
    (logs: superlink.log, bank-N.log), for tests and benchmarks. Use as a context manager; close() stops everything.

    The banks run at niceness `bank_nice` (10): on one machine their training would otherwise starve the SuperLink,
    whose state database then reports 'database is locked' to the ServerApp and the run fails (seen with
    SmolLM2 on 2 cores); across machines the coordinator has its own cores."""

    def __init__(self, root: str | Path, num_banks: int = 3, data_dir: str | Path | None = None,
                 isolation: str = "process", bank_env: dict | None = None, bank_nice: int = 10,
                 bank_folders: dict[int, str | Path] | None = None, bank_args: list[str] | None = None) -> None:

        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.num_banks, self.isolation = num_banks, isolation
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.bank_env = dict(bank_env or {})
        self.bank_nice = bank_nice
        self.bank_folders = {b: Path(f).resolve() for b, f in (bank_folders or {}).items()}
        self.bank_args = list(bank_args or [])  # more `deploy supernode` options (e.g. --scrub off)
        self.certs = make_dev_certs(self.root / "certs")
        self.ca = self.certs["ca.pem"]
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.home = self.root / "coordinator"
        self.keys = {b: make_node_key_pair(self.root / "keys", f"bank-{b}", overwrite=True) for b in range(num_banks)}
        self.runtime_ports = {b: free_port() for b in range(num_banks)}
        self.link: subprocess.Popen | None = None
        self.banks: dict[int, subprocess.Popen] = {}
        self.node_ids: dict[str, int] = {}

    def __enter__(self) -> "LoopbackFederation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_superlink(self, wait_s: float = 60) -> None:
        self.link = start_process([sys.executable, "-m", "fedfingpt", "deploy", "superlink", "--certs",
                                   str(self.root / "certs"), "--port", str(self.port), "--state",
                                   str(self.root / "superlink")], self.root / "superlink.log")
        end = time.monotonic() + wait_s
        while True:
            if self.link.poll() is not None:
                raise DeployError(f"the SuperLink exited; see {self.root / 'superlink.log'}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if time.monotonic() > end:
                raise DeployError(f"the SuperLink did not listen within {wait_s:.0f} s")
            time.sleep(0.5)
        write_connection(self.home, self.address, self.ca)
        self.node_ids = register_banks(self.home, [pub for _, pub in self.keys.values()])

    def start_bank(self, b: int) -> subprocess.Popen:
        """Bank b's SuperNode: reading its own folder (bank_folders, the data contract) when given one, else
        partition b of num_banks of the public sets, as the simulation does."""
        cmd = [sys.executable, "-m", "fedfingpt", "deploy", "supernode", "--bank-id", str(b),
               "--superlink", self.address, "--ca", str(self.ca), "--key", str(self.keys[b][0]),
               "--runtime-port", str(self.runtime_ports[b]), "--state-dir", str(self.root / f"bank-{b}"),
               "--isolation", self.isolation, "--timings", str(self.root / f"timings-{b}.jsonl")]
        if self.bank_folders:
            cmd += ["--bank-data", str(self.bank_folders[b]), *self.bank_args]
        else:
            cmd += ["--num-banks", str(self.num_banks)]
        if self.data_dir:
            cmd += ["--data-dir", str(self.data_dir)]
        self.banks[b] = start_process(cmd, self.root / f"bank-{b}.log", self.bank_env, nice=self.bank_nice)
        return self.banks[b]

    def start(self, wait_s: float = 180) -> "LoopbackFederation":
        """SuperLink, registration, every bank; returns once all banks are online."""
        self.start_superlink()
        for b in range(self.num_banks):
            self.start_bank(b)
        online = wait_for_banks(self.home, self.num_banks, wait_s)
        if len(online) < self.num_banks:
            raise DeployError(f"{len(online)} of {self.num_banks} banks online after {wait_s:.0f} s; see "
                              f"{self.root}/bank-*.log")
        return self

    def online(self) -> list[str]:
        return online_banks(self.home, quiet=True)

    def start_run(self, scenario: str | Path, log: str | Path) -> subprocess.Popen:
        """`fedfingpt deploy run SCENARIO` (not waiting for banks: they are online)."""
        return start_process([sys.executable, "-m", "fedfingpt", "deploy", "run", str(scenario), "--superlink",
                              self.address, "--ca", str(self.ca), "--home", str(self.home), "--wait-banks", "0"], log)

    def run(self, scenario: str | Path, timeout_s: float = 600) -> tuple[int, str]:
        """Run the scenario to its end (bounded in time); (exit code, output)."""
        log = Path(scenario).with_suffix(".log")
        proc = self.start_run(scenario, log)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            stop_process(proc)
        return proc.returncode, log.read_text()

    def close(self) -> None:
        for p in [*self.banks.values(), *([self.link] if self.link else [])]:
            stop_process(p)
