"""The one prompt formatter: FinGPT's instruction template, and its tokenization with the loss on the answer only.

Training, label scoring, generation and serving all build prompts here, so the token boundary is decided once.
"""

from __future__ import annotations

from dataclasses import dataclass

# FinGPT's template is "Instruction: {instruction}\nInput: {input}\nAnswer: {answer}". The space after "Answer:"
# belongs to the answer here: BPE tokenizers (SmolLM2's among them) encode " positive" as one token, and a prompt
# ending in a bare space makes the model continue oddly ("1) positive"). The concatenated text is FinGPT's exactly.
TEMPLATE = "Instruction: {instruction}\nInput: {input}\nAnswer:"
ANSWER_PREFIX = " "
IGNORE_INDEX = -100


def build_prompt(instruction: str, text: str) -> str:
    return TEMPLATE.format(instruction=instruction, input=text)


def build_answer(answer: str) -> str:
    return ANSWER_PREFIX + answer


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt, token ids on the answer (and EOS)
    # The token ids the answer's first token is chosen among (a classification task's one-token label words), so that
    # `training.loss: labels` can train a softmax over those rows of the output head alone; None for free answers.
    choices: tuple[int, ...] | None = None
    # A loss weight per position (as `labels`; the prompt's entries unread), where some answer tokens matter more
    # than others (AML's decision token); None = every answer token weighs 1.
    weights: list[float] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_prompt(tokenizer, prompt: str, max_tokens: int) -> list[int]:
    """Token ids of a prompt, cut inside the input (never the "\\nAnswer:" tail) when it is too long."""
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(ids) <= max_tokens:
        return ids
    tail = tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    keep = max(1, max_tokens - len(tail))
    return ids[:keep] + tail


def label_choices(tokenizer, labels) -> tuple[int, ...] | None:
    """The label words' token ids when every label is one distinct token after the answer prefix (SmolLM2's
    " negative", " neutral", " positive"); None otherwise (the label loss then falls back to the answer loss)."""
    ids = [tokenizer(build_answer(lab), add_special_tokens=False)["input_ids"] for lab in labels]
    firsts = tuple(t[0] for t in ids)
    return firsts if all(len(t) == 1 for t in ids) and len(set(firsts)) == len(firsts) else None


def encode_example(tokenizer, prompt: str, answer: str, max_length: int,
                   choices: tuple[int, ...] | None = None,
                   emphasis: tuple[int, float] | None = None) -> Encoded:
    """Prompt + answer + EOS, with the loss masked to the answer (and EOS) tokens; `choices` as `Encoded.choices`
    (the answer's first token must be one of them); `emphasis` = (i, w): the answer's i-th token weighs w in the
    loss, the others 1 (`Encoded.weights`)."""
    answer_ids = tokenizer(build_answer(answer), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(answer_ids) >= max_length:
        raise ValueError(f"answer {answer[:40]!r} alone needs {len(answer_ids)} tokens > data.max_length={max_length}")
    prompt_ids = encode_prompt(tokenizer, prompt, max_length - len(answer_ids))
    if choices is not None and answer_ids[0] not in choices:
        raise ValueError(f"answer {answer[:40]!r} does not start with one of the label tokens {choices}")
    weights = None
    if emphasis is not None:
        at, w = emphasis
        if not 0 <= at < len(answer_ids) or w <= 0:
            raise ValueError(f"emphasis {emphasis}: answer token {at} of {len(answer_ids)} with a weight > 0")
        weights = [1.0] * (len(prompt_ids) + len(answer_ids))
        weights[len(prompt_ids) + at] = float(w)
    return Encoded(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids, choices, weights)
