"""How the served model computes label scores (`serving.engine`), and the response cache in front of it.

torch      the merged model in PyTorch: the instructions' keys and values cached (PrefixCache), only the labels'
           rows of the head; cast to bf16 once where the CPU has native bf16 (serving.bf16_autocast), fp32 elsewhere.
onnx       the merged decoder exported to ONNX Runtime in memory at start (nothing written to disk), returning the
           last position's hidden state; the labels' rows of the head are applied to it. fp32: the same function.
           The graph takes the keys and values of positions already run: with `serving.prefix_cache`, a batch whose
           prompts share a task's instruction runs only the tokens after it (the instruction's keys and values are
           computed once at start in fp32, as the torch engine caches them); otherwise an empty cache is passed.
onnx-int8  the same graph with block-wise weight-only int8 matrices (MatMulNBits, block 64): activations stay in
           float, which SmolLM2's MLP outliers need (dynamic int8 quantisation of activations breaks it).

The ONNX engines score labels that are one distinct token each (sentiment); any other label set (AML's JSON
openings, typologies) goes to the torch path of the same merged model, as does generation.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ...common.evaluate import task_openings
from ...common.predict import PrefixCache, cached_inputs, label_logprobs, label_token_ids, single_token_labels
from ...common.prompt import encode_prompt

log = logging.getLogger("fedfingpt.serve")

ENGINES = ("torch", "onnx", "onnx-int8")


class TorchEngine:
    name = "torch"

    def __init__(self, model, tokenizer, max_length: int, batch_size: int, bf16, prefix) -> None:
        self.model, self.tokenizer, self.prefix = model, tokenizer, prefix
        self.max_length, self.batch_size, self.bf16 = max_length, batch_size, bf16

    def score(self, prompts: list[str], labels: Sequence[str]) -> np.ndarray:
        """log P(label | prompt, the answer is one of the labels), shape (n, len(labels))."""
        return label_logprobs(self.model, self.tokenizer, prompts, list(labels), max_length=self.max_length,
                              batch_size=self.batch_size, bf16=self.bf16, prefix=self.prefix, among_labels=True)


def cache_arrays(cache) -> list[torch.Tensor]:
    """A key/value cache's tensors, layer by layer (keys, then values), each (batch, kv heads, positions, dim)."""
    if hasattr(cache, "layers"):  # transformers 5.x
        return [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return [t for pair in zip(cache.key_cache, cache.value_cache) for t in pair]


class _LastHidden(torch.nn.Module):
    """The decoder's final (normed) hidden state at the last position of left-padded prompts, after the keys and
    values of positions already run (`past`: per layer keys then values; zero positions for none): what the export
    runs."""

    def __init__(self, decoder: torch.nn.Module, layers: int, cache_kw: str) -> None:
        super().__init__()
        self.decoder, self.layers, self.cache_kw = decoder, layers, cache_kw

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False, **{self.cache_kw: cache})[0][:, -1]


def export_decoder(model, int8: bool = False, block_size: int = 64) -> tuple[bytes, list[str], tuple[int, int]]:
    """The model's decoder as an ONNX graph (bytes; opset 17, dynamic batch, length and cached positions), the
    names of its cache inputs and their (kv heads, dim), optionally with its matrices quantised weight-only to int8
    in blocks of `block_size` input rows."""
    from ...common.predict import cache_kwarg, output_cache

    with torch.no_grad():
        past = cache_arrays(output_cache(model(input_ids=torch.tensor([[3, 4]]), use_cache=True)))
    past = [t.float().expand(2, -1, -1, -1).contiguous() for t in past]
    layers, kv_shape = len(past) // 2, (past[0].shape[1], past[0].shape[3])
    past_names = [f"past_{i}_{kv}" for i in range(layers) for kv in ("key", "value")]
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.cat([torch.ones((2, 2), dtype=torch.long), (ids != 0).long()], dim=1)
    pos = ((ids != 0).long().cumsum(1) - 1).clamp(min=0) + 2
    axes = {"input_ids": {0: "batch", 1: "length"}, "position_ids": {0: "batch", 1: "length"},
            "attention_mask": {0: "batch", 1: "total"}, **{n: {0: "batch", 2: "cached"} for n in past_names}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow it folds
        torch.onnx.export(_LastHidden(model.get_decoder(), layers, cache_kwarg(model)).eval(), (ids, mask, pos, *past),
                          buf, input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={**axes, "hidden": {0: "batch"}})
    if not int8:
        return buf.getvalue(), past_names, kv_shape
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    q = MatMulNBitsQuantizer(onnx.load_from_string(buf.getvalue()), bits=8, block_size=block_size, is_symmetric=True,
                             accuracy_level=4)
    q.process()
    return q.model.model.SerializeToString(), past_names, kv_shape


class OnnxEngine:
    """Sentiment-style label scores from ONNX Runtime; other label sets through `fallback` (the torch engine)."""

    def __init__(self, model, tokenizer, max_length: int, batch_size: int, fallback: TorchEngine,
                 int8: bool = False, threads: int | None = None, prefix=None, int8_block: int = 64) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:  # an optional engine: say what to install
            raise RuntimeError("serving.engine onnx needs onnxruntime (pip install onnxruntime onnx "
                               "onnx_ir; scripts/setup.sh installs them)") from err
        self.name = "onnx-int8" if int8 else "onnx"
        self.int8_block = int8_block if int8 else None
        self.tokenizer, self.max_length, self.batch_size, self.fallback = tokenizer, max_length, batch_size, fallback
        head = model.get_output_embeddings()
        self.head_w = head.weight.detach().float().numpy()
        self.head_b = None if head.bias is None else head.bias.detach().float().numpy()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only
        graph, self.past_names, self.kv_shape = export_decoder(model, int8, int8_block)
        self.session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        self.model, self.prefix = model, prefix  # prefix: a PrefixCache of the same model in fp32, or None
        self._labels: dict[tuple[str, ...], list[int] | None] = {}

    def _rows(self, labels: tuple[str, ...]) -> list[int] | None:
        if labels not in self._labels:
            ids = label_token_ids(self.tokenizer, labels)
            self._labels[labels] = [t[0] for t in ids] if single_token_labels(ids) else None
        return self._labels[labels]

    def score(self, prompts: list[str], labels: Sequence[str]) -> np.ndarray:
        rows = self._rows(tuple(labels))
        if rows is None:
            return self.fallback.score(prompts, labels)
        encoded = [encode_prompt(self.tokenizer, p, self.max_length - 1) for p in prompts]
        order = np.argsort([len(e) for e in encoded])
        out = np.zeros((len(prompts), len(rows)), dtype=np.float64)
        w = self.head_w[rows]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask, pos, cached = cached_inputs(self.model, [encoded[i] for i in idx], self.tokenizer.pad_token_id,
                                                   self.prefix)
            if cached:
                past = [np.ascontiguousarray(t.float().numpy()) for t in cache_arrays(next(iter(cached.values())))]
            else:
                past = [np.zeros((len(idx), self.kv_shape[0], 0, self.kv_shape[1]), dtype=np.float32)] * \
                    len(self.past_names)
            hidden = self.session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                             "position_ids": pos.numpy(), **dict(zip(self.past_names, past))})[0]
            logits = hidden.astype(np.float64) @ w.T.astype(np.float64)
            if self.head_b is not None:
                logits = logits + self.head_b[rows]
            out[idx] = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        return out


def make_engine(name: str, model, tokenizer, max_length: int, batch_size: int, bf16, prefix, int8_block: int = 64):
    torch_engine = TorchEngine(model, tokenizer, max_length, batch_size, bf16, prefix)
    if name == "torch":
        return torch_engine
    if name in ("onnx", "onnx-int8"):
        # the instructions' keys and values in fp32, whatever the torch path autocasts to: the graph is fp32
        own = PrefixCache(model, tokenizer, task_openings(), bf16=False) if prefix is not None else None
        return OnnxEngine(model, tokenizer, max_length, batch_size, torch_engine, int8=name == "onnx-int8",
                          prefix=own, int8_block=int8_block)
    raise ValueError(f"serving.engine {name!r}: choose one of {', '.join(ENGINES)}")


class ResponseCache:
    """Label scores of recent prompts, least recently used out first; `size` 0 keeps nothing. The key is the
    prompt as the model sees it (after the gate: redacted), the adapter's hash and the label set, so a cached answer
    is exactly what the model would compute and never holds the raw text."""

    def __init__(self, size: int, adapter_sha256: str) -> None:
        self.size, self.adapter = size, adapter_sha256
        self._d: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, prompt: str, labels: tuple[str, ...]) -> np.ndarray | None:
        if not self.size:
            return None
        with self._lock:
            row = self._d.get((prompt, self.adapter, labels))
            if row is None:
                self.misses += 1
                return None
            self._d.move_to_end((prompt, self.adapter, labels))
            self.hits += 1
            return row

    def put(self, prompt: str, labels: tuple[str, ...], row: np.ndarray) -> None:
        if not self.size:
            return
        with self._lock:
            self._d[(prompt, self.adapter, labels)] = row
            self._d.move_to_end((prompt, self.adapter, labels))
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)
