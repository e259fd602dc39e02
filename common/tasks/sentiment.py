"""Financial sentiment as FinGPT defines it: the instructions verbatim, the label words, prompts from examples.

Data loading and FinGPT's splits live in `sentiment_data`; prompt text and tokenization in `common.prompt`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..prompt import Encoded, build_prompt, encode_example, label_choices
from .sentiment_data import LABELS, SentimentExample

INSTRUCTIONS = {
    "news": "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.",
    "tweet": "What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.",
}
# Content-free input for contextual calibration: what the model says when the input carries no sentiment.
CONTENT_FREE = "N/A"


def sentiment_prompt(example: SentimentExample) -> str:
    return build_prompt(INSTRUCTIONS[example.kind], example.text)


def content_free_prompt(kind: str) -> str:
    return build_prompt(INSTRUCTIONS[kind], CONTENT_FREE)


def encode_sentiment(tokenizer, examples: Sequence[SentimentExample], max_length: int) -> list[Encoded]:
    choices = label_choices(tokenizer, LABELS)
    return [encode_example(tokenizer, sentiment_prompt(ex), ex.label, max_length, choices) for ex in examples]


__all__ = ["INSTRUCTIONS", "LABELS", "sentiment_prompt", "content_free_prompt", "encode_sentiment"]
