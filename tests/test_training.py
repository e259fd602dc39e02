"""The one training loop, the prompt formatter's loss mask, label scoring, generation, and 4-bit QLoRA."""

import numpy as np
import pytest
import torch

from fedfingpt.common.train import batch_order, collate, train
from fedfingpt.common.adapter import get_lora_arrays
from fedfingpt.common.models import attach_lora, load_base_model
from fedfingpt.common.predict import generate, label_logprobs, label_token_ids
from fedfingpt.common.prompt import IGNORE_INDEX, build_prompt, encode_example, encode_prompt
from fedfingpt.common.tasks.sentiment import INSTRUCTIONS, encode_sentiment, sentiment_prompt
from fedfingpt.common.tasks.sentiment_data import LABELS, SentimentExample

EXAMPLES = [
    SentimentExample("Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "positive", "fpb", "news"),
    SentimentExample("The company said sales fell sharply and it will cut 200 jobs.", "negative", "fpb", "news"),
    SentimentExample("Shares were unchanged after the annual general meeting.", "neutral", "fpb", "news"),
    SentimentExample("$ACME to the moon after earnings beat", "positive", "tfns", "tweet"),
]


def test_prompt_is_fingpt_template_and_loss_is_masked_to_the_answer(tiny_config):
    tok = load_base_model(tiny_config.model).tokenizer
    prompt = sentiment_prompt(EXAMPLES[0])
    assert prompt == f"Instruction: {INSTRUCTIONS['news']}\nInput: {EXAMPLES[0].text}\nAnswer:"
    enc = encode_example(tok, prompt, "positive", max_length=96)
    n_prompt = len(encode_prompt(tok, prompt, 96))
    assert enc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    answer = enc.labels[n_prompt:]
    assert answer[-1] == tok.eos_token_id and tok.decode(answer[:-1]) == " positive"
    # Text of prompt + answer is FinGPT's "Answer: positive" exactly.
    assert tok.decode(enc.input_ids, skip_special_tokens=True).endswith("Answer: positive")


def test_long_inputs_are_cut_inside_the_input_keeping_the_answer_cue(tiny_config):
    tok = load_base_model(tiny_config.model).tokenizer
    prompt = build_prompt(INSTRUCTIONS["news"], "profit " * 500)
    enc = encode_example(tok, prompt, "neutral", max_length=64)
    assert len(enc) <= 64
    assert tok.decode(enc.input_ids).endswith("\nAnswer: neutral<|endoftext|>")


def test_group_by_length_batches_cover_every_example_once():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(5, 90) for _ in range(203)]
    batches = batch_order(lengths, 8, random.Random(0), group_by_length=True)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(203))
    spread_grouped = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    plain = batch_order(lengths, 8, random.Random(0), group_by_length=False)
    spread_plain = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain])
    assert spread_grouped < spread_plain / 2


def test_collate_pads_and_masks(tiny_config):
    tok = load_base_model(tiny_config.model).tokenizer
    enc = encode_sentiment(tok, EXAMPLES[:2], 96)
    b = collate(enc, tok.pad_token_id)
    short = int(np.argmin([len(e) for e in enc]))
    n = len(enc[short])
    assert b["attention_mask"][short, n:].sum() == 0 and (b["labels"][short, n:] == IGNORE_INDEX).all()


def test_training_changes_lora_and_lowers_the_loss(tiny_config):
    loaded = load_base_model(tiny_config.model)
    every_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = attach_lora(loaded.model, tiny_config.lora.model_copy(update={"target_modules": every_linear}))
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = get_lora_arrays(model)
    enc = encode_sentiment(loaded.tokenizer, EXAMPLES, 96)
    cfg = tiny_config.training.model_copy(update={"max_steps": 25, "eval_every": 10, "log_every": 5,
                                                  "schedule": "constant"})
    seen = []
    result = train(model, enc, cfg, pad_id=loaded.tokenizer.pad_token_id, eval_fn=lambda s: {"step": s},
                   on_log=lambda s, l: seen.append(s), progress=False)
    assert result.steps == 25 and result.examples == 25 * 4 and result.tokens > 0
    assert [s for s, _ in result.evals] == [10, 20, 25] and seen == [5, 10, 15, 20, 25]
    # A random tiny model's frozen lm_head caps how far the loss can fall; the drop must still be clear.
    assert result.losses[-1][1] < result.losses[0][1] - 0.3, result.losses
    after = get_lora_arrays(model)
    assert any(not np.allclose(after[k], lora_before[k]) for k in after)
    for n, p in model.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), f"frozen {n} changed"


def test_gradient_accumulation_matches_a_large_batch(tiny_config):
    """Two micro-batches of 2 accumulated give the same update as one batch of 4 (same examples)."""
    results = []
    for bs, accum in ((4, 1), (2, 2)):
        loaded = load_base_model(tiny_config.model)
        torch.manual_seed(0)  # the same LoRA A init for both runs
        model = attach_lora(loaded.model, tiny_config.lora)
        # equal lengths, so mean-of-means equals the mean over the batch
        same = [EXAMPLES[2]] * 4
        enc = encode_sentiment(loaded.tokenizer, same, 96)
        cfg = tiny_config.training.model_copy(update={"max_steps": 1, "batch_size": bs, "grad_accum": accum,
                                                      "group_by_length": False, "max_grad_norm": None})
        train(model, enc, cfg, pad_id=loaded.tokenizer.pad_token_id, progress=False)
        results.append(get_lora_arrays(model))
    for k in results[0]:
        np.testing.assert_allclose(results[0][k], results[1][k], atol=1e-6)


def test_extra_loss_term_is_applied(tiny_config):
    """A term that rewards large LoRA B entries (the slot FedProx's proximal term uses) drives every B entry up;
    without it, B moves in both directions."""
    lowest = []
    for extra in (None, lambda m: -1e3 * sum(p.sum() for n, p in m.named_parameters() if "lora_B" in n)):
        loaded = load_base_model(tiny_config.model)
        model = attach_lora(loaded.model, tiny_config.lora)
        enc = encode_sentiment(loaded.tokenizer, EXAMPLES, 96)
        cfg = tiny_config.training.model_copy(update={"max_steps": 3, "lr": 1e-3, "max_grad_norm": None})
        train(model, enc, cfg, pad_id=loaded.tokenizer.pad_token_id, extra_loss=extra, progress=False)
        lowest.append(min(v.min() for k, v in get_lora_arrays(model).items() if "lora_B" in k))
    assert lowest[0] < 0 < lowest[1]


def _hand_logprob(model, tok, prompt, label):
    ids = encode_prompt(tok, prompt, 96)
    lab = label_token_ids(tok, [label])[0]
    lp = torch.log_softmax(model(input_ids=torch.tensor([ids + lab])).logits[0], -1)
    return sum(lp[len(ids) - 1 + k, t].item() for k, t in enumerate(lab))


SHARED_OPENING = ("answer: negative", "answer: neutral", "answer: positive")  # tiny vocab: 2 shared tokens + 1


SHARED_THEN_APART = ("answer: bullish", "answer: bearish trend ahead", "answer: sideways")  # as AML's typologies


@pytest.mark.parametrize("labels, path", [(LABELS, "single"), (("bullish", "bearish", "sideways"), "continuations"),
                                          (SHARED_THEN_APART, "continuations"), (SHARED_OPENING, "shared opening")])
def test_label_scoring_matches_a_hand_computation_on_every_path(tiny_config, labels, path):
    """One forward pass when every label is one token, or when the labels share all but a distinct last token
    (one pass over prompt + the shared tokens); a continuation per label otherwise. Each must equal
    log P(label tokens | prompt) computed by hand."""
    from fedfingpt.common.predict import _shared_opening

    loaded = load_base_model(tiny_config.model)
    model, tok = loaded.model, loaded.tokenizer
    ids = label_token_ids(tok, labels)
    found = "single" if all(len(t) == 1 for t in ids) else "shared opening" if _shared_opening(ids) else \
        "continuations"
    assert found == path, "the case exercises the intended path"
    prompts = [sentiment_prompt(e) for e in EXAMPLES]
    seen = []
    hook = model.register_forward_hook(lambda mod, args, out: seen.append(args or out))
    try:
        logp = label_logprobs(model, tok, prompts, labels, max_length=96, batch_size=3, bf16=False)
    finally:
        hook.remove()
    assert logp.shape == (4, len(labels)) and np.all(logp < 0)
    if path == "shared opening":
        assert len(seen) == 2  # 4 prompts in batches of 3, one sequence per prompt: not one per label
    for i, p in enumerate(prompts):
        for j, lab in enumerate(labels):
            assert abs(logp[i, j] - _hand_logprob(model, tok, p, lab)) < 1e-4



@pytest.mark.parametrize("labels", [LABELS, ("bullish", "bearish", "sideways"), SHARED_THEN_APART, SHARED_OPENING])
def test_label_scoring_sends_only_the_needed_positions_through_the_output_head(tiny_config, labels):
    """A (batch, length, vocab) logits tensor is what made AML scoring hold gigabytes; only the positions that
    predict label tokens may come out of the model."""
    loaded = load_base_model(tiny_config.model)
    model, tok = loaded.model, loaded.tokenizer
    widths = []
    hook = model.register_forward_hook(lambda mod, args, out: widths.append(tuple(out.logits.shape)))
    try:
        label_logprobs(model, tok, [sentiment_prompt(e) for e in EXAMPLES], labels, max_length=96, batch_size=4,
                       bf16=False)
    finally:
        hook.remove()
    from fedfingpt.common.predict import _shared_opening

    ids = label_token_ids(tok, labels)
    longest = max(len(t) for t in ids)
    if longest == 1 or _shared_opening(ids):
        assert widths and all(w[1] == longest for w in widths), widths
    else:  # the prompts once (their last position), then every (prompt, label) pair's further label tokens
        common = next(i for i in range(longest) if len({t[i] if i < len(t) else None for t in ids}) > 1)
        assert [w[:2] for w in widths] == [(4, common + 1), (4 * len(labels), longest - common - 1)], widths

@pytest.mark.parametrize("labels", [LABELS, ("bullish", "bearish", "sideways")])
def test_scoring_among_the_labels_renormalises_and_reads_only_the_labels_head_rows(tiny_config, labels):
    """A classifier needs P(label | prompt, one of the labels): the same numbers as full-vocabulary scoring
    renormalised over the labels; with one-token labels the vocabulary-wide output head is never run."""
    loaded = load_base_model(tiny_config.model)
    model, tok = loaded.model, loaded.tokenizer
    prompts = [sentiment_prompt(e) for e in EXAMPLES]
    full = label_logprobs(model, tok, prompts, labels, max_length=96, batch_size=3, bf16=False)
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        among = label_logprobs(model, tok, prompts, labels, max_length=96, batch_size=3, bf16=False,
                               among_labels=True)
    finally:
        hook.remove()
    np.testing.assert_allclose(among, full - np.logaddexp.reduce(full, axis=1, keepdims=True), atol=1e-4)
    np.testing.assert_allclose(np.exp(among).sum(axis=1), 1.0, atol=1e-6)
    single = all(len(t) == 1 for t in label_token_ids(tok, labels))
    assert (len(calls) == 0) == single, calls


def test_generation_returns_continuations(tiny_config):
    loaded = load_base_model(tiny_config.model)
    out = generate(loaded.model, loaded.tokenizer, [sentiment_prompt(e) for e in EXAMPLES], max_new_tokens=3,
                   bf16=False, batch_size=2)
    assert len(out) == 4 and all(isinstance(o, str) for o in out)
    # left padding must not change a prompt's continuation: batch of 1 gives the same text
    solo = generate(loaded.model, loaded.tokenizer, [sentiment_prompt(EXAMPLES[1])], max_new_tokens=3, bf16=False)
    assert solo[0] == out[1]


def test_4bit_training_updates_lora_after_an_eval_forward(tiny_config):
    """bitsandbytes' AVX512-BF16 4-bit CPU path has no autograd; our loader disables it (see STACK pitfall 3)."""
    import bitsandbytes as bnb

    cfg = tiny_config.model.model_copy(update={"quantization": "4bit"})
    loaded = load_base_model(cfg)
    q = [m for m in loaded.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert q and all(m.support_avx512bf16_for_cpu is False for m in q)
    model = attach_lora(loaded.model, tiny_config.lora)
    enc = encode_sentiment(loaded.tokenizer, EXAMPLES, 96)
    model.eval()
    with torch.no_grad():  # the forward that used to switch the kernel and kill gradients
        model(input_ids=torch.tensor([enc[0].input_ids]))
    before = get_lora_arrays(model)
    train(model, enc, tiny_config.training.model_copy(update={"max_steps": 2}),
          pad_id=loaded.tokenizer.pad_token_id, progress=False)
    after = get_lora_arrays(model)
    changed = [k for k in after if "lora_A" in k and not np.allclose(after[k], before[k])]
    assert len(changed) == len([k for k in after if "lora_A" in k]), "every LoRA A matrix moved"


def test_unshuffled_batches_keep_the_given_order():
    import random

    assert batch_order([5] * 7, 3, random.Random(0), group_by_length=False, shuffle=False) == [[0, 1, 2], [3, 4, 5], [6]]


def test_8bit_base_trains_lora(tiny_config):
    import bitsandbytes as bnb

    loaded = load_base_model(tiny_config.model.model_copy(update={"quantization": "8bit"}))
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in loaded.model.modules())
    model = attach_lora(loaded.model, tiny_config.lora)
    before = get_lora_arrays(model)
    train(model, encode_sentiment(loaded.tokenizer, EXAMPLES, 96), tiny_config.training.model_copy(update={"max_steps": 2}),
          pad_id=loaded.tokenizer.pad_token_id, progress=False)
    after = get_lora_arrays(model)
    assert all(not np.allclose(after[k], before[k]) for k in after if "lora_A" in k)


def _mixed_batch(tok):
    """Sentiment rows of different lengths (label choices) and a free-answer row with a multi-token answer."""
    from fedfingpt.common.prompt import label_choices

    enc = encode_sentiment(tok, EXAMPLES, 96)
    assert enc[0].choices == label_choices(tok, LABELS) and enc[0].choices is not None
    enc.append(encode_example(tok, build_prompt("Summarise the case.", "A sent 9,500 to B twice."),
                              '{"suspicious": true, "typology": "structuring"}', 96))
    return collate(enc, tok.pad_token_id)


def _trained_looking_lora(tiny_config):
    """The tiny model with LoRA on attention and MLP matrices whose B is not zero (B = 0 would make every gradient
    but B's vanish), seeded."""
    loaded = load_base_model(tiny_config.model)
    torch.manual_seed(0)
    model = attach_lora(loaded.model, tiny_config.lora.model_copy(update={"target_modules": ["q_proj", "v_proj",
                                                                                              "down_proj"]}))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    return loaded, model


def _loss_and_grads(model, batch, **how) -> tuple[float, dict]:
    """answer_loss(model, batch, **how) and the gradient of every trainable parameter."""
    from fedfingpt.common.train import answer_loss

    model.zero_grad()
    loss = answer_loss(model, batch, **how)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("per_example", [False, True])
def test_head_only_at_answer_positions_gives_the_full_logits_loss_and_gradients(tiny_config, per_example):
    """The head applied only where an answer token is predicted: the same loss and LoRA gradients as the model's own
    forward over the whole vocabulary at every position (token mean, and the per-example mean DP uses), and the head
    sees only those positions."""

    loaded, model = _trained_looking_lora(tiny_config)
    batch = _mixed_batch(loaded.tokenizer)
    grads, losses, head_rows = [], [], []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, o: head_rows.append(a[0].shape))
    for full in (True, False):
        loss, g = _loss_and_grads(model, batch, per_example=per_example, full_logits=full)
        losses.append(loss)
        grads.append(g)
    hook.remove()
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-6)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)
    n_answer = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert head_rows[0][:2] == batch["input_ids"].shape and tuple(head_rows[1]) == (n_answer, head_rows[0][-1])
    if not per_example:  # and it is Hugging Face's causal-LM loss
        want = model(**{k: v for k, v in batch.items() if k != "choices"}).loss.item()
        assert losses[1] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("label_loss", [False, True])
def test_a_shared_opening_runs_once_and_gives_the_same_loss_and_gradients(tiny_config, label_loss):
    """Rows that share their instruction: the opening runs once (one row of it reaches the decoder) and its keys and
    values serve every row; the loss and every LoRA gradient equal the forward that runs each row whole."""
    from fedfingpt.common.train import shared_opening_length

    loaded, model = _trained_looking_lora(tiny_config)
    news = [e for e in EXAMPLES if e.kind == "news"]
    batch = collate(encode_sentiment(loaded.tokenizer, news, 96), loaded.tokenizer.pad_token_id)
    shared = shared_opening_length(batch)
    opening = len(loaded.tokenizer(build_prompt(INSTRUCTIONS["news"], ""))["input_ids"])
    assert opening - 6 <= shared < opening  # the instruction, up to where the rows' own text starts
    rows_in = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: rows_in.append(tuple(a[0].shape)))
    grads, losses = [], []
    for share in (False, True):
        rows_in.clear()
        loss, g = _loss_and_grads(model, batch, label_loss=label_loss, shared_opening=share)
        losses.append(loss)
        grads.append(g)
    hook.remove()
    width = batch["input_ids"].shape[1]
    assert rows_in == [(1, shared), (len(news), width - shared)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6)


def test_no_opening_is_shared_by_rows_of_other_instructions_or_before_an_answer(tiny_config):
    """Rows that part within the first tokens share nothing; nor is the token before an answer ever shared."""
    from fedfingpt.common.train import shared_opening_length

    tok = load_base_model(tiny_config.model).tokenizer
    assert shared_opening_length(_mixed_batch(tok)) == 0  # sentiment rows beside an AML case
    batch = collate(encode_sentiment(tok, [EXAMPLES[2], EXAMPLES[2]], 96), tok.pad_token_id)  # identical rows
    first_answer = int((batch["labels"][0] != IGNORE_INDEX).nonzero()[0, 0])
    assert shared_opening_length(batch) == first_answer - 1


def test_grouping_by_opening_batches_rows_of_one_instruction():
    import random

    from fedfingpt.common.train import batch_order

    rng = random.Random(3)
    lengths = [rng.randint(20, 80) for _ in range(800)]
    groups = [rng.randrange(3) for _ in range(800)]
    batches = batch_order(lengths, 8, random.Random(0), group_by_length=True, groups=groups)
    assert sorted(i for b in batches for i in b) == list(range(800))
    mixed = sum(len({groups[i] for i in b}) > 1 for b in batches)
    assert mixed <= 2 * 2  # at most a batch per group boundary in each of the two windows
    plain = batch_order(lengths, 8, random.Random(0), group_by_length=True)
    assert sum(len({groups[i] for i in b}) > 1 for b in plain) > 50


def test_label_loss_is_a_softmax_over_the_label_rows_at_the_first_answer_token(tiny_config):
    """training.loss=labels: a classification row's loss is -log softmax over its label words' logits at the position
    that chooses the label; a free-answer row keeps its answer tokens' loss over the whole vocabulary."""
    from fedfingpt.common.train import answer_loss

    loaded = load_base_model(tiny_config.model)
    model = attach_lora(loaded.model, tiny_config.lora)
    batch = _mixed_batch(loaded.tokenizer)
    with torch.no_grad():
        got = answer_loss(model, batch, per_example=True, label_loss=True).item()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target = batch["labels"][:, 1:]
    per_row = []
    for i in range(len(target)):
        pos = (target[i] != IGNORE_INDEX).nonzero()[:, 0]
        if batch["choices"][i, 0] >= 0:
            rows = batch["choices"][i]
            lp = torch.log_softmax(logits[i, pos[0], rows], -1)
            per_row.append(-lp[(rows == target[i, pos[0]]).nonzero()[0, 0]].item())
        else:
            per_row.append(torch.nn.functional.cross_entropy(logits[i, pos], target[i, pos]).item())
    assert got == pytest.approx(float(np.mean(per_row)), rel=1e-5)
    with torch.no_grad():  # and it differs from the answer loss, which counts the whole vocabulary and the EOS
        assert answer_loss(model, batch, per_example=True).item() != pytest.approx(got, rel=1e-3)


def test_training_with_the_label_loss_learns_the_labels(tiny_config):
    loaded = load_base_model(tiny_config.model)
    torch.manual_seed(0)
    model = attach_lora(loaded.model, tiny_config.lora)
    tok = loaded.tokenizer
    enc = encode_sentiment(tok, EXAMPLES[:3], 96)
    prompts = [sentiment_prompt(e) for e in EXAMPLES[:3]]
    before = label_logprobs(model, tok, prompts, LABELS, max_length=96, bf16=False, among_labels=True)
    cfg = tiny_config.training.model_copy(update={"max_steps": 30, "loss": "labels", "schedule": "constant"})
    train(model, enc, cfg, pad_id=tok.pad_token_id, progress=False)
    after = label_logprobs(model, tok, prompts, LABELS, max_length=96, bf16=False, among_labels=True)
    truth = [LABELS.index(e.label) for e in EXAMPLES[:3]]
    assert after[range(3), truth].mean() > before[range(3), truth].mean() + 0.5
    assert list(after.argmax(1)) == truth


def test_kept_predictions_are_the_ones_the_reported_scores_come_from(tiny_config):
    """Paired comparisons resample per-example predictions: they must be exactly what the row's F1 was computed
    from, one per example in order, and absent unless asked for."""
    from fedfingpt.common.evaluate import evaluate_sentiment
    from fedfingpt.common.metrics import classification_report

    loaded = load_base_model(tiny_config.model)
    model = attach_lora(loaded.model, tiny_config.lora, seed=0)
    rows = [SentimentExample(text=f"Shares of company {i} moved {i} percent.", label=LABELS[i % 3], source="fpb", kind="news")
            for i in range(10)]
    cfg = tiny_config.eval.model_copy(update={"method": "both", "calibrate": False, "max_new_tokens": 3})
    plain = evaluate_sentiment(model, loaded.tokenizer, {"fpb": rows}, cfg, max_length=96, progress=False)
    kept = evaluate_sentiment(model, loaded.tokenizer, {"fpb": rows}, cfg, max_length=96, progress=False,
                              keep_predictions=True)
    assert all("predictions" not in r for r in plain)
    assert [r["method"] for r in kept] == ["likelihood", "generate"]
    for r in kept:
        assert len(r["predictions"]) == len(rows)
        report = classification_report([x.label for x in rows], r["predictions"], LABELS)
        assert report["weighted_f1"] == r["weighted_f1"]
