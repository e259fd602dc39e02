"""A decision head for AML screening: logistic regression on the language model's hidden states at the point where
its answer states the decision (the prompt followed by '{"suspicious":'), read from the last layer and the middle
one. The model itself is not trained; the head is a vector of twice the hidden size (2 x 576 for SmolLM2-135M).

Why: a linear read-out of those states separates laundering from clean cases far better than the decision token's
likelihood after LoRA training at the budgets measured (benchmarks/results/README.md, "The adapter on the hard
world"): the states hold the case's evidence, while the language-model head's fixed true/false rows are what the
adapter has to turn towards it, a few thousand noisy steps away.

Training is federated full-batch gradient descent: each round every bank sends the gradient of its own cases' loss
(one vector of the head's size) and the number of cases, the server sums them and takes one Adam step. The feature
scaling comes from the banks' summed feature sums and squares, sent once. With every bank in every round this is
exactly gradient descent on the pooled cases, so centralized training is the same function with one bank, and a
local-only head is the same with the bank alone. The alert threshold and calibration come from the validation
score histograms (common/tasks/aml_calibration.py), as for the adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .aml_calibration import _sigmoid

L2_GRID = (1e-3, 1e-2, 1e-1)  # the ridge penalties tried; the one with the lowest summed validation loss is kept


class HeadError(ValueError):
    """Cases a decision head cannot be fitted on (named by what is missing)."""


@torch.no_grad()
def decision_states(model, tokenizer, cases: Sequence, *, max_length: int, max_lines: int, batch_size: int = 16,
                    bf16: bool | str = "auto", on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The hidden states at the decision position for each case: (n, 2 x hidden), the last layer's then the middle
    layer's, float32. The prompt is the scored one (`aml_prompt`, cut to max_length as `label_logprobs` cuts it)."""
    from ..predict import _autocast, pad_left
    from ..prompt import build_answer, encode_prompt
    from .aml import DECISION_OPENING, aml_prompt

    opening = tokenizer(build_answer(DECISION_OPENING), add_special_tokens=False)["input_ids"]
    seqs = [encode_prompt(tokenizer, aml_prompt(c, max_lines), max_length - len(opening)) + opening for c in cases]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: little padding
    out: list[np.ndarray | None] = [None] * len(seqs)
    try:
        decoder = model.get_decoder()  # the layers without the language-model head: its logits are not needed
    except (AttributeError, NotImplementedError):
        decoder = model
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, mask, pos = pad_left([seqs[i] for i in idx], tokenizer.pad_token_id)
            with _autocast(bf16):
                hs = decoder(input_ids=ids, attention_mask=mask, position_ids=pos,
                             output_hidden_states=True).hidden_states
            states = torch.cat([hs[-1][:, -1], hs[len(hs) // 2][:, -1]], dim=1).float().numpy()
            for j, i in enumerate(idx):
                out[i] = states[j]
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32)


@dataclass
class DecisionHead:
    mean: np.ndarray  # feature scaling (from the banks' summed sums and squares)
    scale: np.ndarray
    w: np.ndarray
    b: float
    l2: float
    rounds: int

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(laundering) per row of decision states."""
        return _sigmoid(((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.w + self.b)


def _check(banks: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    if not banks or not sum(len(y) for _, y in banks):
        raise HeadError("no training cases for the decision head")
    ys = np.concatenate([np.asarray(y) for _, y in banks])
    if ys.min() == ys.max():
        raise HeadError(f"the decision head's training cases hold one label only ({bool(ys[0])}): it needs both "
                        "laundering and clean cases")


def fit_head(banks: Sequence[tuple[np.ndarray, np.ndarray]], l2: float = 1e-2, rounds: int = 300,
             lr: float = 0.05) -> DecisionHead:
    """Federated full-batch gradient descent on the banks' (states, labels): the mean L2-penalised logistic loss
    over all their cases, Adam on the server. One bank = centralized (or local-only) training."""
    _check(banks)
    n = sum(len(y) for _, y in banks)
    s1 = sum(np.asarray(x, dtype=np.float64).sum(0) for x, _ in banks)  # what each bank sends once
    s2 = sum((np.asarray(x, dtype=np.float64) ** 2).sum(0) for x, _ in banks)
    mean = s1 / n
    scale = np.sqrt(np.maximum(s2 / n - mean ** 2, 0.0)) + 1e-6
    data = [(((np.asarray(x, dtype=np.float64) - mean) / scale), np.asarray(y, dtype=np.float64)) for x, y in banks]
    theta = np.zeros(len(mean) + 1)  # w then b
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for t in range(1, rounds + 1):
        g = np.zeros_like(theta)
        for z, y in data:  # each bank: the gradient of its cases' summed loss at the current head
            if len(y):
                err = _sigmoid(z @ theta[:-1] + theta[-1]) - y
                g[:-1] += z.T @ err
                g[-1] += err.sum()
        g /= n
        g[:-1] += l2 * theta[:-1]
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta -= lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return DecisionHead(mean, scale, theta[:-1], float(theta[-1]), l2, rounds)


def log_loss(head: DecisionHead, x: np.ndarray, y: np.ndarray) -> float:
    """Summed logistic loss of the head on (x, y): what a bank reports of its validation cases to choose l2."""
    p = np.clip(head.scores(x), 1e-12, 1 - 1e-12)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.sum(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_head_tuned(train: Sequence[tuple[np.ndarray, np.ndarray]], val: Sequence[tuple[np.ndarray, np.ndarray]],
                   grid: Sequence[float] = L2_GRID, rounds: int = 300) -> DecisionHead:
    """fit_head at each penalty of `grid`; the head whose summed validation loss (each bank's own sum) is lowest."""
    if not sum(len(y) for _, y in val):
        raise HeadError("no validation cases to choose the decision head's penalty on (set data.aml.val_share)")
    best, best_loss = None, np.inf
    for l2 in grid:
        head = fit_head(train, l2=l2, rounds=rounds)
        loss = sum(log_loss(head, x, y) for x, y in val if len(y))
        if loss < best_loss:
            best, best_loss = head, loss
    return best


__all__ = ["decision_states", "DecisionHead", "fit_head", "fit_head_tuned", "log_loss", "HeadError", "L2_GRID"]
