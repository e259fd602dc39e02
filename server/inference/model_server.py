"""The model behind the service: base model + verified adapter, and micro-batching of concurrent requests.

Requests from many gRPC threads queue their prompts; one worker thread takes up to `max_batch_size` prompts
(waiting at most `max_wait_ms` for more) and scores them in one pass with the same label-likelihood code as
training-time evaluation. A request whose deadline passes while it waits is dropped before it costs compute.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...common.adapter import load_adapter, load_adapter_archive, read_manifest
from ...common.config import ServiceConfig
from ...common.models import attach_lora, load_base_model, use_bf16
from ...common.predict import PrefixCache, generate_stream
from ...common.evaluate import task_openings
from .engines import ResponseCache, make_engine
from ...enclave.serving import is_sealed, make_enclave, serving_measurement, unseal_adapter_file

# The code the serving process runs, which the enclave hook measures and binds sealed adapters to.
SERVED_CODE = ("fedfingpt", "fedfingpt.common", "fedfingpt.server", "fedfingpt.api", "fedfingpt.enclave")

log = logging.getLogger("fedfingpt.serve")


class DeadlineExceeded(RuntimeError):
    pass


@dataclass
class _Job:
    prompts: list[str]
    labels: tuple[str, ...]
    deadline: float | None  # time.monotonic() value
    future: Future = field(default_factory=Future)


class MicroBatcher:
    """Collects jobs that share a label set and scores them together (one thread, so one forward at a time)."""

    def __init__(self, score_fn, max_batch_size: int, max_wait_ms: float) -> None:
        self.score_fn = score_fn
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.q: queue.Queue[_Job | None] = queue.Queue()
        self.batches: list[int] = []  # prompts per forward batch (for the benchmark and tests)
        self._thread = threading.Thread(target=self._run, name="micro-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompts: list[str], labels: tuple[str, ...], deadline: float | None) -> Future:
        job = _Job(list(prompts), labels, deadline)
        self.q.put(job)
        return job.future

    def close(self) -> None:
        self.q.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            batch = [job]
            size = len(job.prompts)
            until = time.monotonic() + self.max_wait
            held: list[_Job] = []
            while size < self.max_batch_size:
                try:
                    nxt = self.q.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self.q.put(None)
                    break
                if nxt.labels == job.labels and size + len(nxt.prompts) <= self.max_batch_size:
                    batch.append(nxt)
                    size += len(nxt.prompts)
                else:
                    held.append(nxt)
                    break
            for h in held:
                self.q.put(h)
            now = time.monotonic()
            live = []
            for j in batch:
                if j.deadline is not None and now > j.deadline:
                    j.future.set_exception(DeadlineExceeded("the deadline passed while the request waited"))
                else:
                    live.append(j)
            if not live:
                continue
            prompts = [p for j in live for p in j.prompts]
            try:
                scores = self.score_fn(prompts, job.labels)
            except Exception as err:  # every waiting request learns of the failure
                for j in live:
                    j.future.set_exception(err)
                continue
            self.batches.append(len(prompts))
            at = 0
            for j in live:
                j.future.set_result(scores[at: at + len(j.prompts)])
                at += len(j.prompts)


class ModelServer:
    """Base model + adapter, verified at start; label scoring through the micro-batcher, streamed generation."""

    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        loaded = load_base_model(cfg.model)
        self.tokenizer = loaded.tokenizer
        self.base_id, self.base_sha256 = loaded.base_id, loaded.base_sha256
        self.adapter_sha256, self.round, self.epsilon, self.delta = "", 0, 0.0, 0.0
        s = cfg.serving
        self.enclave = make_enclave(cfg, loaded.base_sha256, SERVED_CODE)
        if s.adapter and is_sealed(s.adapter):  # unsealed in memory only, inside the enclave's process
            data = unseal_adapter_file(self.enclave, s.adapter)
            self.model, manifest = load_adapter_archive(loaded.model, data, base_sha256=loaded.base_sha256,
                                                        source=s.adapter)
        elif s.adapter:
            read_manifest(s.adapter)  # refuses a changed or truncated adapter (checksum)
            self.model, manifest = load_adapter(loaded.model, Path(s.adapter), base_sha256=loaded.base_sha256)
        self.aml_calibration = None  # the risk score's calibration, where the adapter's folder has one
        if s.adapter:
            self.adapter_sha256 = manifest["weights_sha256"]
            if Path(s.adapter).is_dir():
                from ...common.tasks.aml_calibration import Calibration

                self.aml_calibration = Calibration.load(Path(s.adapter))
            self.round = int(manifest.get("round", 0))
            dp = (manifest.get("config") or {}).get("privacy") or {}
            if dp.get("mode", "none") != "none":
                self.epsilon, self.delta = float(manifest.get("privacy_epsilon", 0.0)), float(dp.get("delta", 0.0))
        else:
            log.warning("serving.adapter is not set: serving the base model without an adapter")
            self.model = attach_lora(loaded.model, cfg.lora, seed=0)  # zero B: exactly the base model
        if s.merge_adapter:
            self.model = self.model.merge_and_unload()  # the served function stays; the adapter's matmuls go
        self.model.eval()
        # bf16 where native: cast once (autocast would re-cast every weight at every call); ONNX exports fp32
        self.cast_bf16 = s.engine == "torch" and s.merge_adapter and use_bf16(s.bf16_autocast)
        if self.cast_bf16:
            self.model = self.model.to(torch.bfloat16)
        self.bf16 = False if self.cast_bf16 else s.bf16_autocast  # autocast on top of the model's own dtype
        self.prefix = PrefixCache(self.model, self.tokenizer, task_openings(), bf16=self.bf16) \
            if s.prefix_cache else None
        self.engine = make_engine(s.engine, self.model, self.tokenizer, s.max_length, s.max_batch_size, self.bf16,
                                  self.prefix, s.int8_block_size)
        self.cache = ResponseCache(s.response_cache, self.adapter_sha256)
        log.info("serving engine %s%s, response cache %s", self.engine.name, " (bf16 weights)" if self.cast_bf16
                 else "", f"{s.response_cache} entries" if s.response_cache else "off")
        self.measurement = serving_measurement(cfg, self.base_sha256, self.adapter_sha256, SERVED_CODE)
        if self.enclave is not None and self.enclave.name == "software":
            self.enclave.measurement = self.measurement.combined
        self.seen_prompts: list[str] | None = None  # set to [] to record what reaches the model (tests)
        self._lock = threading.Lock()  # one forward at a time between the batcher and generation
        self.batcher = MicroBatcher(self._score, s.max_batch_size, s.max_wait_ms)

    def _score(self, prompts: list[str], labels: tuple[str, ...]) -> np.ndarray:
        with self._lock:
            if self.seen_prompts is not None:
                self.seen_prompts.extend(prompts)
            return self.engine.score(prompts, labels)

    def score(self, prompts: list[str], labels: tuple[str, ...], deadline: float | None) -> np.ndarray:
        return self.score_counted(prompts, labels, deadline)[0]

    def score_counted(self, prompts: list[str], labels: tuple[str, ...],
                      deadline: float | None) -> tuple[np.ndarray, int]:
        """Label log-probabilities of the prompts (n, len(labels)) and how many came from the response cache."""
        cached = [self.cache.get(p, labels) for p in prompts]
        todo = [i for i, c in enumerate(cached) if c is None]
        if todo:
            fut = self.batcher.submit([prompts[i] for i in todo], labels, deadline)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                fresh = fut.result(timeout=timeout)
            except TimeoutError:
                raise DeadlineExceeded("the deadline passed before the model answered") from None
            for i, row in zip(todo, fresh):
                cached[i] = row
                self.cache.put(prompts[i], labels, row)
        return np.stack(cached), len(prompts) - len(todo)

    def stream(self, prompt: str, max_new_tokens: int):
        with self._lock:
            if self.seen_prompts is not None:
                self.seen_prompts.append(prompt)
            yield from generate_stream(self.model, self.tokenizer, prompt, max_new_tokens=max_new_tokens,
                                       max_length=max(self.cfg.serving.max_length, 2 * max_new_tokens),
                                       bf16=self.bf16)

    def close(self) -> None:
        self.batcher.close()
