"""A long-lived ClientApp process for a bank's SuperNode started with `--isolation process`.

Flower 1.41 starts a fresh `flwr-clientapp` process for every message (it imports torch, loads the model and the
bank's data each time). This worker takes the SuperNode's ClientApp tasks from its Runtime API one after another
and runs them in one process, so that all of it happens once; Flower's own Runtime API calls carry each task.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("fedfingpt.worker")

CLIENT_APP_TASK = "flwr-clientapp"  # flwr.supercore.constant.TaskType.CLIENT_APP


def preload() -> None:
    """Import what every message needs (torch, transformers, PEFT, our ClientApp) before the first task."""
    from . import app  # noqa: F401  (imports torch, transformers, peft, flwr)


def _runtime_client(address: str, interceptors: list):
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    # The Runtime API is the SuperNode's own, on loopback: Flower's SuperExec reaches it the same way (no TLS)
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


class ClientAppWorker:
    """Serves ClientApp tasks from one SuperNode's Runtime API, in this process, until stopped.

    Parameters
    ----------
    runtime_api_address : str
        The SuperNode's Runtime API (its `--host`:`--port`, e.g. 127.0.0.1:9094).
    poll_s : float (default: 0.2)
        Seconds between asks for a task while idle (Flower's SuperExec asks every second).
    timings_path : str or None (default: None)
        JSONL file that gets one line per task: message type, run, and seconds to pull, run and push it.
    """

    def __init__(self, runtime_api_address: str, poll_s: float = 0.2, timings_path: str | None = None) -> None:
        self.address = runtime_api_address
        self.poll_s = poll_s
        self.timings_path = Path(timings_path) if timings_path else None
        self.stop = threading.Event()
        self.tasks = 0
        self._apps: dict[str, object] = {}  # FAB hash -> loaded ClientApp
        self._run_id: int | None = None
        self._one_at_a_time = threading.RLock()  # one ClientApp call at a time (they share the cached model)

    def serve(self) -> int:
        """Ask for tasks until stopped; each task gets its own thread for its transfers, while the ClientApp itself
        runs one task at a time. A task whose message never arrives (its run was stopped while the SuperNode
        fetched it) then waits in its own thread, as it would in its own process, instead of blocking the bank."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        preload()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
        acquire = _runtime_client(self.address, [RuntimeVersionHttpInterceptor(component_name="SuperExec")])
        log.info("serving ClientApp tasks of the SuperNode at %s in process %d", self.address, os.getpid())
        try:
            while not self.stop.is_set():
                try:
                    res = acquire.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
                except Exception as err:  # the SuperNode restarting: keep the loaded model and ask again
                    log.warning("SuperNode at %s not answering (%s); asking again", self.address, err)
                    self.stop.wait(1.0)
                    continue
                if res.HasField("task") and res.token:
                    threading.Thread(target=self.run_task, args=(res.token, time.time()), daemon=True).start()
                else:
                    self.stop.wait(self.poll_s)
        finally:
            acquire.close()
        return self.tasks

    def run_task(self, token: str, acquired_at: float | None = None) -> dict:
        """Pull one task's message, run the ClientApp on it here, push the reply and the task's final status."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
        from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
        from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

        from . import app as client_app

        t0 = time.perf_counter()
        acquired_at = acquired_at or time.time()
        client = _runtime_client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                                RuntimeTokenHttpInterceptor(token)])
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        timing: dict = {"pid": os.getpid()}
        try:
            message, context, run, fab = pull_task_input(client)
            timing.update(run_id=run.run_id, type=message.metadata.message_type, pull_s=time.perf_counter() - t0)
            with self._one_at_a_time:
                self._new_run(run.run_id)
                app = self._app(run, fab)
                t1 = time.perf_counter()
                client_app.task_started = acquired_at  # the ClientApp reports its start-up from here
                try:
                    reply = app(message=message, context=context)
                finally:
                    client_app.task_started = None
                timing["app_s"] = time.perf_counter() - t1
            status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # the bank's error goes back to the server as an error reply, as Flower's does
            log.exception("ClientApp task failed")
            details = f"{type(ex)}:<'{ex}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            t2 = time.perf_counter()
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client=client, context=context, sub_status=status, details=details)
            except Exception:  # the SuperNode went away: nothing left to tell it
                log.exception("could not push the task's reply or status")
            finally:
                heartbeat.stop()
                client.close()
            timing.update(push_s=time.perf_counter() - t2, total_s=time.perf_counter() - t0, status=status)
            with self._one_at_a_time:
                self.tasks += 1
                n = self.tasks
            log.info("task %d (%s, run %s): pull %.2fs, ClientApp %.2fs, push %.2fs", n, timing.get("type"),
                     timing.get("run_id"), timing.get("pull_s", 0), timing.get("app_s", 0), timing["push_s"])
            if self.timings_path:
                with open(self.timings_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(timing) + "\n")
        return timing

    def _new_run(self, run_id: int) -> None:
        """Keep one run's model and data in memory: a new run starts from a clean cache (bounded memory)."""
        if self._run_id is not None and run_id != self._run_id:
            from .bank import forget_banks

            forget_banks()
        self._run_id = run_id

    def _app(self, run, fab):
        """The run's ClientApp, as Flower loads it from the run's FAB (installed once per FAB)."""
        if fab.hash_str not in self._apps:
            from flwr.cli.install import install_from_fab
            from flwr.clientapp.utils import get_load_client_app_fn

            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self._apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self._apps[fab.hash_str]
