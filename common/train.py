"""The one training loop: centralized baselines, federated banks and DP training all call `train`.

Read it top to bottom: batches -> forward (answer-only loss, optional extra term) -> backward -> clip -> step.
With `dp` (DP-SGD through Opacus) the same loop draws Poisson-sampled batches, Opacus computes a gradient per
example for the LoRA parameters only, clips each to `dp.max_grad_norm` and adds Gaussian noise at the step. A
large logical batch runs as physical batches of `dp.physical_batch_size` (as Opacus's BatchMemoryManager does:
each physical batch's clipped gradients are summed, the optimizer told to skip its step until the logical batch
ends), so the noise is added once per logical batch whatever the memory allows.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import TrainingConfig
from .models import use_bf16
from .prompt import IGNORE_INDEX, Encoded

@dataclass(frozen=True)
class DPSpec:
    """DP-SGD settings for one call of the training loop (the bank's ledger in client/privacy.py derives them)."""

    noise_multiplier: float
    max_grad_norm: float  # per-example clipping bound
    sample_rate: float  # Poisson sampling: each example joins a step's batch with this probability
    expected_batch_size: int  # the logical batch: sample_rate x examples
    physical_batch_size: int | None = None  # examples per forward/backward; None = the whole logical batch at once


@dataclass
class TrainResult:
    steps: int
    examples: int
    tokens: int  # real (non-padding) tokens seen
    wall_s: float
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last log)
    evals: list[tuple[int, dict]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1][1] if self.losses else float("nan")


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        ids[i, : len(e)] = torch.tensor(e.input_ids)
        labels[i, : len(e)] = torch.tensor(e.labels)
        mask[i, : len(e)] = 1
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    k = max((len(e.choices) for e in batch if e.choices), default=0)
    if k:  # the label words of classification rows; -1 = a free-answer row (or padding of a shorter choice list)
        choices = torch.full((len(batch), k), -1, dtype=torch.long)
        for i, e in enumerate(batch):
            if e.choices:
                choices[i, : len(e.choices)] = torch.tensor(e.choices)
        out["choices"] = choices
    if any(e.weights is not None for e in batch):  # per-token loss weights; 1 where a row gives none
        weights = torch.ones((len(batch), width), dtype=torch.float32)
        for i, e in enumerate(batch):
            if e.weights is not None:
                weights[i, : len(e)] = torch.tensor(e.weights)
        out["weights"] = weights
    return out


OPENING_KEY_TOKENS = 16  # rows whose first 16 tokens agree share an instruction: batched together when grouping


def opening_groups(examples: Sequence[Encoded]) -> list[int]:
    """A group number per example: the same for examples that start with the same OPENING_KEY_TOKENS tokens."""
    seen: dict[tuple[int, ...], int] = {}
    return [seen.setdefault(tuple(e.input_ids[:OPENING_KEY_TOKENS]), len(seen)) for e in examples]


def batch_order(
    lengths: Sequence[int], batch_size: int, rng: random.Random, group_by_length: bool, shuffle: bool = True,
    groups: Sequence[int] | None = None,
) -> list[list[int]]:
    """One epoch of index batches. Grouping sorts within shuffled windows of 50 batches (about a third of each
    batch was padding otherwise) and then shuffles the batches, so the order stays random across windows. With
    `groups` (opening_groups), a window is sorted by group first, so a batch's rows share their instruction."""
    idx = list(range(len(lengths)))
    if not shuffle:
        return [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    rng.shuffle(idx)
    if group_by_length:
        window = batch_size * 50
        key = lengths.__getitem__ if groups is None else (lambda i: (groups[i], lengths[i]))
        idx = [i for s in range(0, len(idx), window) for i in sorted(idx[s : s + window], key=key)]
    batches = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def make_private(model: torch.nn.Module, optimizer, dp: DPSpec, gen: torch.Generator):
    """Opacus around our model and optimizer: per-example gradients (trainable, i.e. LoRA, parameters only),
    per-example clipping to dp.max_grad_norm, Gaussian noise of std noise_multiplier x max_grad_norm per step."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    forward = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    optimizer = DPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                            expected_batch_size=dp.expected_batch_size, loss_reduction="mean", generator=gen)
    return forward, optimizer


def poisson_batch(n: int, sample_rate: float, gen: torch.Generator) -> list[int]:
    """DP-SGD's sampling: every example joins the batch independently with probability `sample_rate`."""
    return torch.nonzero(torch.rand(n, generator=gen) < sample_rate).flatten().tolist()


def example_mean_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                      per_example: bool = True) -> torch.Tensor:
    """From full logits (the reference computation, used where the model's head is not a plain linear map): the mean
    over examples of each example's (weighted) mean answer-token loss, or with `per_example` off the (weighted) mean
    over all answer tokens."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    tok = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                            ignore_index=IGNORE_INDEX, reduction="none").view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).float()
    if weights is not None:
        mask = mask * weights[:, 1:]
    if not per_example:
        return (tok * mask).sum() / mask.sum().clamp(min=1e-12)
    return ((tok * mask).sum(1) / mask.sum(1).clamp(min=1e-12)).mean()


MIN_SHARED_TOKENS = 16  # a shorter common opening (news and tweets share 8 tokens) is not worth a second pass


def shared_opening_length(batch: dict[str, torch.Tensor]) -> int:
    """How many leading tokens every row of a (right-padded) batch shares and no loss reads: the tokens
    before the first position that predicts an answer token, in the longest common start of the rows."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    if ids.shape[0] < 2:
        return 0
    width = int(mask.sum(1).min())
    same = (ids[:, :width] == ids[:1, :width]).all(0)
    common = width if bool(same.all()) else int((~same).nonzero()[0, 0])
    answered = (labels != IGNORE_INDEX).any(0).nonzero()
    first_answer = int(answered[0, 0]) if len(answered) else ids.shape[1]
    n = min(common, first_answer - 1)  # the position before the first answer token must be computed per row
    return n if n >= MIN_SHARED_TOKENS else 0


def decoder_hidden(decoder: torch.nn.Module, batch: dict[str, torch.Tensor], shared: int) -> torch.Tensor:
    """The decoder's last hidden states (batch, length, hidden). With `shared` > 0, the first `shared` tokens,
    the same in every row, run once and their keys and values are repeated for the rows (whose gradients then sum
    into that one pass); the rows run only their own tokens. Causal attention makes the states of the rows' own
    tokens those of a full forward; the shared positions' states are returned as zeros (no loss reads them)."""
    if not shared:
        return decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
    from .predict import cache_kwarg, output_cache

    ids = batch["input_ids"]
    n, width = ids.shape
    cache = output_cache(decoder(input_ids=ids[:1, :shared], use_cache=True))
    cache.batch_repeat_interleave(n)
    pos = torch.arange(shared, width).expand(n, -1)
    own = decoder(input_ids=ids[:, shared:], attention_mask=batch["attention_mask"], position_ids=pos,
                  use_cache=True, **{cache_kwarg(decoder): cache})[0]
    return torch.cat([own.new_zeros(n, shared, own.shape[-1]), own], dim=1)


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], *, per_example: bool = False,
                label_loss: bool = False, full_logits: bool = False, shared_opening: bool = False) -> torch.Tensor:
    """The training loss of a batch, with the output head applied only where the loss reads it.

    The decoder runs over every token; the head (SmolLM2's is 49,152 x 576, a fifth of a forward's arithmetic)
    only at the positions that predict an answer token. The loss is the answer tokens' cross-entropy over the whole
    vocabulary, as a mean over tokens (the plain path; Hugging Face's causal-LM loss exactly) or, with
    `per_example`, a mean over examples of each example's token mean (what Opacus's per-example gradients need).

    label_loss: for rows with `choices` (classification), only the answer's first token counts, as a softmax over
    the label words' rows of the head (a 3-way softmax for sentiment); free-answer rows (AML) keep the answer loss.
    A batch's `weights` (per-token, `Encoded.weights`) turn each mean into a weighted mean.
    full_logits: the reference computation (the model's own forward over the whole vocabulary at every position),
    kept for comparisons; also what a model whose head is not a plain linear map gets.
    shared_opening: run the rows' common opening once (`decoder_hidden`); not with `per_example`, whose
    per-example gradients (Opacus) need every row's own activations.
    """
    from .predict import plain_head

    labels, weights = batch["labels"], batch.get("weights")
    plain = None if full_logits else plain_head(model)
    if plain is None:
        if label_loss and "choices" in batch:
            raise ValueError("training.loss=labels needs a model whose output head is a plain linear map")
        if per_example or weights is not None:
            return example_mean_loss(model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).logits, labels, weights,
                                     per_example=per_example)
        return model(**{k: v for k, v in batch.items() if k not in ("choices", "weights")}).loss
    decoder, head = plain
    shared = shared_opening_length(batch) if shared_opening and not per_example else 0
    hidden = decoder_hidden(decoder, batch, shared)[:, :-1]
    target = labels[:, 1:]
    answer = target != IGNORE_INDEX  # (batch, length - 1): positions that predict an answer token
    choices = batch.get("choices") if label_loss else None
    if choices is not None:
        classify = choices[:, 0] >= 0
        first = answer & (answer.cumsum(1) == 1) & classify[:, None]  # where a classification row's label is chosen
        answer = answer & ~classify[:, None]
    losses, rows = [], []
    if answer.any():
        logits = head(hidden[answer]).float()
        losses.append(torch.nn.functional.cross_entropy(logits, target[answer], reduction="none"))
        rows.append(answer.nonzero()[:, 0])
    if choices is not None and first.any():
        row = first.nonzero()[:, 0]
        rows_of_head = head.weight[choices[row].clamp(min=0)]  # (n, k, hidden)
        logits = torch.einsum("nh,nkh->nk", hidden[first], rows_of_head.to(hidden.dtype)).float()
        if head.bias is not None:
            logits = logits + head.bias[choices[row].clamp(min=0)].float()
        logits = logits.masked_fill(choices[row] < 0, float("-inf"))
        pick = (choices[row] == target[first][:, None]).float().argmax(1)
        losses.append(torch.nn.functional.cross_entropy(logits, pick, reduction="none"))
        rows.append(row)
    if not losses:
        raise ValueError("a batch with no answer tokens: every label is masked (answers cut by data.max_length?)")
    tok, row = torch.cat(losses), torch.cat(rows)
    w = torch.ones_like(tok)
    if weights is not None:  # the weights of the positions in the order the losses were gathered
        shifted = weights[:, 1:]
        parts = [shifted[answer]] + ([shifted[first]] if choices is not None and first.any() else [])
        w = torch.cat(parts).to(tok.dtype)
    if not per_example:
        return (tok * w).sum() / w.sum()
    n = labels.shape[0]
    sums = torch.zeros(n, dtype=tok.dtype).index_add(0, row, tok * w)
    counts = torch.zeros(n, dtype=tok.dtype).index_add(0, row, w)
    return (sums / counts.clamp(min=1e-12)).mean()


def total_steps(cfg: TrainingConfig, n_examples: int) -> int:
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.epochs * n_examples / (cfg.batch_size * cfg.grad_accum)))


def make_optimizer(model: torch.nn.Module, cfg: TrainingConfig, steps: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; attach LoRA before training")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=int(cfg.warmup_ratio * steps), num_training_steps=steps)
    return optimizer, scheduler


def train(
    model: torch.nn.Module,
    examples: Sequence[Encoded],
    cfg: TrainingConfig,
    *,
    pad_id: int,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    eval_fn: Callable[[int], dict] | None = None,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    dp: DPSpec | None = None,
) -> TrainResult:
    """Train the model's trainable (LoRA) parameters on encoded examples.

    extra_loss: a term added to each micro-batch loss (FedProx's proximal term, for instance).
    eval_fn: called with the step number every `cfg.eval_every` steps and at the end; its dict is kept.
    dp: DP-SGD settings (DPSpec); the caller accounts for the steps (client.privacy.PrivacyLedger).
    """
    if not examples:
        raise ValueError("no training examples")
    steps = total_steps(cfg, len(examples))
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    lengths = [len(e) for e in examples]
    share = cfg.shared_opening and dp is None and not cfg.full_logits
    groups = opening_groups(examples) if share and cfg.group_by_opening else None
    optimizer, scheduler = make_optimizer(model, cfg, steps)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16(cfg.bf16_autocast) else contextlib.nullcontext()
    forward = model
    if dp is not None:
        gen = torch.Generator().manual_seed(cfg.seed)
        forward, optimizer = make_private(model, optimizer, dp, gen)

    if dp is not None and cfg.grad_accum != 1:
        raise ValueError("training.grad_accum must be 1 under DP-SGD: a step is one Poisson batch (make it larger "
                         "with privacy.expected_batch_size; privacy.physical_batch_size bounds the memory)")

    def micro_batches():
        if dp is not None:
            while True:
                yield poisson_batch(len(examples), dp.sample_rate, gen)
        while True:  # epochs until the step budget is spent
            yield from batch_order(lengths, cfg.batch_size, rng, cfg.group_by_length, cfg.shuffle, groups)

    def micro_steps(first: list[int]):
        """(indices, last of the step) for one optimizer step: grad_accum micro-batches, or under DP one Poisson
        batch cut into physical batches."""
        if dp is None:
            yield first, cfg.grad_accum == 1
            for i in range(1, cfg.grad_accum):
                yield next(batches), i == cfg.grad_accum - 1
            return
        size = dp.physical_batch_size or max(1, len(first))
        chunks = [first[i:i + size] for i in range(0, len(first), size)] or [[]]
        for i, chunk in enumerate(chunks):
            yield chunk, i == len(chunks) - 1

    result = TrainResult(steps=0, examples=0, tokens=0, wall_s=0.0)
    batches = micro_batches()
    running, running_n = 0.0, 0
    bar = tqdm(total=steps, desc=desc, disable=not progress, mininterval=2.0, leave=False)
    model.train()
    t0 = time.perf_counter()
    try:
        for step in range(1, steps + 1):
            for idx, last in micro_steps(next(batches)):
                if dp is not None and not last:  # a physical batch inside a logical one: clip and sum, no step
                    optimizer.signal_skip_step(do_skip=True)
                if not idx:  # an empty Poisson batch: the step still happens and adds noise only
                    for p in optimizer.params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                    continue
                batch = collate([examples[i] for i in idx], pad_id)
                with autocast:
                    # under DP the hooks Opacus put on the LoRA layers record each example's activations and
                    # gradients whichever way the decoder is called; its loss is a mean over examples
                    loss = answer_loss(model, batch, per_example=dp is not None, label_loss=cfg.loss == "labels",
                                       full_logits=cfg.full_logits, shared_opening=share)
                    if extra_loss is not None:
                        loss = loss + extra_loss(model)
                (loss / cfg.grad_accum).backward()
                running += loss.item()
                running_n += 1
                result.examples += len(idx)
                result.tokens += int(batch["attention_mask"].sum())
                if dp is not None and not last:
                    optimizer.step()  # skipped by Opacus: the clipped per-example gradients are summed
                    optimizer.zero_grad(set_to_none=True)
            if cfg.max_grad_norm is not None and dp is None:  # DP clips each example's gradient instead
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps = step
            bar.update(1)
            if (step % cfg.log_every == 0 or step == steps) and running_n:
                mean_loss = running / running_n
                result.losses.append((step, mean_loss))
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if on_log is not None:
                    on_log(step, mean_loss)
                running, running_n = 0.0, 0
            if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
                result.wall_s += time.perf_counter() - t0  # evaluation time is not training time
                result.evals.append((step, eval_fn(step)))
                model.train()
                t0 = time.perf_counter()
    finally:
        if dp is not None:
            forward._close()  # take Opacus's hooks off the (cached, reused) model
    result.wall_s += time.perf_counter() - t0
    bar.close()
    model.eval()
    return result
