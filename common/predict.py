"""Prediction from prompts: label-likelihood scoring (a probability per label) and greedy generation.

Both take prompts built by `common.prompt`, so training, evaluation and serving see the same token boundary.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence

import numpy as np
import torch

from .models import use_bf16
from .prompt import build_answer, encode_prompt


def _autocast(setting: bool | str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if use_bf16(setting) else contextlib.nullcontext()


def cache_kwarg(model) -> str:
    """The name a model's forward takes its key/value cache by: `cache` in transformers 5.x (where
    `past_key_values` is deprecated), `past_key_values` before."""
    import inspect

    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        decoder = model
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def output_cache(out):
    """The key/value cache a forward returned (`cache` in transformers 5.x, `past_key_values` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ids, attention mask and position ids (counting from each sequence's first real token), so that
    every sequence ends at the last column and a batch of them gives the same logits as each alone."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


class PrefixCache:
    """Attention keys and values of fixed prompt openings (a task's instruction), computed once for a model whose
    weights no longer change (serving), so that scoring runs only each prompt's own tokens.

    Any prompt that starts with the same tokens as an opening reuses them: with causal attention, the keys and values
    of the first L positions depend on those L tokens alone, so the scores equal a full forward's up to float
    rounding. Never share one across a weight update (training): the cached values would be the old model's."""

    MIN_TOKENS = 4  # shorter common openings are not worth a cache copy

    def __init__(self, model, tokenizer, openings: Sequence[str], bf16: bool | str = False) -> None:
        self.model = model
        self._caches: dict[tuple[int, ...], object] = {}
        with torch.no_grad(), _autocast(bf16):
            for text in openings:
                ids = tuple(tokenizer(text, add_special_tokens=True)["input_ids"])
                if len(ids) >= self.MIN_TOKENS and ids not in self._caches:
                    self._caches[ids] = output_cache(model(input_ids=torch.tensor([ids]), use_cache=True))

    def __len__(self) -> int:
        return len(self._caches)

    def match(self, seqs: list[list[int]]) -> tuple[int, object | None]:
        """(L, the cache of an opening's first L tokens expanded to the batch) for the opening that the longest
        common start L of every sequence shares (each keeps at least one token of its own); (0, None) if none."""
        best, best_ids = 0, None
        shortest = min(len(s) for s in seqs) - 1
        for ids in self._caches:
            n = min(len(ids), shortest)
            for s in seqs:
                n = next((i for i in range(n) if s[i] != ids[i]), n)
            if n > best:
                best, best_ids = n, ids
        if best < self.MIN_TOKENS:
            return 0, None
        cache = copy.deepcopy(self._caches[best_ids])  # the forward appends to it
        if best < len(best_ids):
            cache.crop(best - len(best_ids))  # a negative count: the tokens to drop from the end
        if len(seqs) > 1:
            cache.batch_repeat_interleave(len(seqs))
        return best, cache


def cached_inputs(model, seqs: list[list[int]], pad_id: int, prefix: PrefixCache | None):
    """Left-padded ids, attention mask, position ids and forward kwargs for sequences, starting after the longest
    opening `prefix` holds for all of them (its keys and values passed as the cache), or from the first token."""
    start, past = prefix.match(seqs) if prefix is not None and prefix.model is model else (0, None)
    ids, mask, pos = pad_left([s[start:] for s in seqs], pad_id)
    if past is None:
        return ids, mask, pos, {}
    mask = torch.cat([torch.ones((len(seqs), start), dtype=mask.dtype), mask], dim=1)
    return ids, mask, pos + start, {cache_kwarg(model): past}


def single_token_labels(label_ids: list[list[int]]) -> bool:
    """Every label is one token, and no two labels share it: one position's scores give them all."""
    return all(len(t) == 1 for t in label_ids) and len({t[0] for t in label_ids}) == len(label_ids)


def plain_head(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, output head) when logits are exactly head(decoder's last hidden state): a plain linear map, no logit
    scale or soft-capping (Gemma, Cohere) and no adapter on the head itself; None otherwise."""
    try:
        head, decoder = model.get_output_embeddings(), model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    cfg = getattr(model, "config", None)
    if type(head) is not torch.nn.Linear or decoder is None or any(
            getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    return decoder, head


def _last_logits(model, seqs: list[list[int]], pad_id: int, keep: int, bf16,
                 prefix: PrefixCache | None = None, rows: list[int] | None = None) -> torch.Tensor:
    """Float logits of the last `keep` positions of every sequence, shape (n, keep, vocab), or (n, keep, len(rows))
    with `rows`: only those vocabulary entries (label tokens), where the head allows it (see `plain_head`).

    Only those positions go through the output head (`logits_to_keep`), which spares a (batch, length, vocab) tensor:
    about 5 GB for 32 AML narratives of 400 tokens over SmolLM2's 49k vocabulary. A model whose forward does not take
    `logits_to_keep` computes every position and is sliced. With a prefix cache whose opening the sequences share,
    only the tokens after it are run, left-padded after the cached positions. With `rows`, the head's other rows are
    never read: SmolLM2's head is 113 MB of weights, about 10 ms per forward on two CPU cores for one position."""
    ids, mask, pos, kwargs = cached_inputs(model, seqs, pad_id, prefix)
    plain = plain_head(model) if rows is not None else None
    with _autocast(bf16):
        if plain is not None:
            decoder, head = plain
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs)[0]
            w = head.weight[rows]
            out = hidden[:, -keep:] @ w.T.to(hidden.dtype)
            return (out if head.bias is None else out + head.bias[rows]).float()
        try:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, **kwargs).logits
        except TypeError as e:
            if "logits_to_keep" not in str(e):
                raise
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, **kwargs).logits
    logits = logits[:, -keep:].float()
    return logits if rows is None else logits[..., rows]


def label_token_ids(tokenizer, labels: Sequence[str]) -> list[list[int]]:
    return [tokenizer(build_answer(lab), add_special_tokens=False)["input_ids"] for lab in labels]


@torch.no_grad()
def label_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 16,
    bf16: bool | str = "auto",
    progress=None,
    prefix: PrefixCache | None = None,
    among_labels: bool = False,
) -> np.ndarray:
    """log P(label | prompt) for every prompt and label, shape (n, len(labels)); `prefix` spares recomputing the
    prompts' shared opening (serving). With `among_labels`, log P(label | prompt, the answer is one of the labels):
    each row normalised over the labels alone, which is all a classifier's probabilities need, and with one-token
    labels only the labels' rows of the output head are computed.

    When every label is one distinct token (SmolLM2: " negative", " neutral", " positive"), one forward pass over
    the prompt gives all of them from the last position. When the labels share their first tokens and differ only
    in their last one (AML: '{"suspicious": true' / '... false'), one pass over prompt + the shared tokens gives
    them all (the shared tokens' log-probs added to each). Otherwise (AML's typologies) the prompt and the labels'
    common first tokens run once and each label's remaining tokens continue from their keys and values.
    """
    model.eval()
    label_ids = label_token_ids(tokenizer, labels)
    single = single_token_labels(label_ids)
    shared = _shared_opening(label_ids) if not single else []
    longest_label = max(len(t) for t in label_ids)
    encoded = [encode_prompt(tokenizer, p, max_length - longest_label) for p in prompts]
    order = np.argsort([len(e) for e in encoded])  # similar lengths together: less padding
    out = np.zeros((len(prompts), len(labels)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if shared:
            # prompt + shared tokens, once per prompt: the last len(shared) + 1 positions predict the shared tokens
            # and then each label's own last token
            lasts = [t[-1] for t in label_ids]
            logp = torch.log_softmax(_last_logits(model, [encoded[i] + shared for i in idx], tokenizer.pad_token_id,
                                                  len(shared) + 1, bf16, prefix), dim=-1)
            opening = logp[:, torch.arange(len(shared)), torch.tensor(shared)].sum(dim=1, keepdim=True)
            out[idx] = (opening + logp[:, -1, lasts]).double().numpy()
        elif single:
            firsts = [t[0] for t in label_ids]
            logits = _last_logits(model, [encoded[i] for i in idx], tokenizer.pad_token_id, 1, bf16, prefix,
                                  rows=firsts if among_labels else None)
            logp = torch.log_softmax(logits[:, -1], dim=-1)
            out[idx] = (logp if among_labels else logp[:, firsts]).numpy()
        else:
            out[idx] = _continuations(model, [encoded[i] for i in idx], label_ids, tokenizer.pad_token_id, bf16,
                                      prefix)
        if progress is not None:
            progress.update(len(idx))
    if among_labels and not single:
        out -= np.logaddexp.reduce(out, axis=1, keepdims=True)
    return out


def _continuations(model, seqs: list[list[int]], label_ids: list[list[int]], pad_id: int, bf16,
                   prefix: PrefixCache | None) -> np.ndarray:
    """log P(label tokens | sequence) for every sequence and label, (n, k): one pass over each sequence plus the
    labels' common first tokens (their log-probs, and each label's next token, read from its last positions),
    then the labels' remaining tokens for all n x k pairs at once from that pass's keys and values, right-padded."""
    common = 0
    while all(len(t) > common + 1 for t in label_ids) and len({t[common] for t in label_ids}) == 1:
        common += 1
    shared, rests = label_ids[0][:common], [t[common:] for t in label_ids]
    n, k = len(seqs), len(label_ids)
    ids, mask, pos, kwargs = cached_inputs(model, [s + shared for s in seqs], pad_id, prefix)
    with _autocast(bf16):
        first = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                      logits_to_keep=common + 1, **kwargs)
    logp = torch.log_softmax(first.logits[:, -(common + 1):].float(), dim=-1)
    score = logp[:, torch.arange(common), torch.tensor(shared, dtype=torch.long)].sum(1, keepdim=True) \
        + logp[:, -1, [r[0] for r in rests]]  # (n, k): the common tokens and each label's next one
    width = max(len(r) for r in rests) - 1
    if width > 0:  # the labels' further tokens, every (sequence, label) pair a row: r[:-1] in, r[1:] predicted
        cache = output_cache(first)
        cache.batch_repeat_interleave(k)
        cont = torch.full((n * k, width), pad_id, dtype=torch.long)
        cont_mask = torch.zeros((n * k, width), dtype=mask.dtype)
        for row in range(n * k):
            r = rests[row % k][:-1]
            cont[row, : len(r)] = torch.tensor(r, dtype=torch.long)
            cont_mask[row, : len(r)] = 1
        cont_pos = pos[:, -1:].repeat_interleave(k, dim=0) + 1 + torch.arange(width)
        with _autocast(bf16):
            more = model(input_ids=cont, attention_mask=torch.cat([mask.repeat_interleave(k, dim=0), cont_mask], 1),
                         position_ids=cont_pos, **{cache_kwarg(model): cache}).logits.float()
        more = torch.log_softmax(more, dim=-1)
        for row in range(n * k):
            r = rests[row % k]
            if len(r) > 1:
                score[row // k, row % k] += more[row, torch.arange(len(r) - 1), torch.tensor(r[1:])].sum()
    return score.double().numpy()


def _shared_opening(label_ids: list[list[int]]) -> list[int]:
    """The labels' common first tokens when each label is those plus one distinct last token, else []."""
    n = len(label_ids[0]) - 1
    if n < 1 or any(len(t) != n + 1 or t[:n] != label_ids[0][:n] for t in label_ids):
        return []
    return label_ids[0][:n] if len({t[-1] for t in label_ids}) == len(label_ids) else []


def softmax(logp: np.ndarray) -> np.ndarray:
    z = logp - logp.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 4,
    max_length: int = 256,
    batch_size: int = 16,
    bf16: bool | str = "auto",
    progress=None,
) -> list[str]:
    """Greedy continuations of each prompt (left-padded batches), decoded without special tokens."""
    model.eval()
    encoded = [encode_prompt(tokenizer, p, max_length - max_new_tokens) for p in prompts]
    out: list[str] = [""] * len(prompts)
    order = np.argsort([len(e) for e in encoded])
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask, _ = pad_left([encoded[i] for i in idx], tokenizer.pad_token_id)
        width = ids.shape[1]
        with _autocast(bf16):
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True)
        if progress is not None:
            progress.update(len(idx))
    return out


def generate_stream(model, tokenizer, prompt: str, *, max_new_tokens: int = 64, max_length: int = 512,
                    bf16: bool | str = "auto"):
    """Greedy continuation of one prompt, yielded as text increments while it is produced (KV cache, one token
    per step); stops at EOS. Each increment is the newly decoded text, so joining them gives the decoded whole."""
    model.eval()
    ids = torch.tensor([encode_prompt(tokenizer, prompt, max_length - max_new_tokens)])
    past, produced, sent = None, [], ""
    with torch.no_grad(), _autocast(bf16):
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, use_cache=True, **({cache_kwarg(model): past} if past is not None else {}))
            past = output_cache(out)
            nxt = int(out.logits[0, -1].argmax())
            if nxt == tokenizer.eos_token_id:
                break
            produced.append(nxt)
            text = tokenizer.decode(produced, skip_special_tokens=True)
            if len(text) > len(sent) and not text.endswith("\ufffd"):  # wait for a whole character
                yield text[len(sent):]
                sent = text
            ids = torch.tensor([[nxt]])
