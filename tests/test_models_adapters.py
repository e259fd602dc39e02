"""Model loading, LoRA attachment, the adapter codec (PEFT folder + manifest, arrays) and its error cases."""

import json
import re

import numpy as np
import pytest
import torch
from flwr.app import Array

from fedfingpt.common.adapter import (
    AdapterError, get_lora_arrays, load_adapter, read_manifest, save_adapter, set_lora_arrays,
)
from fedfingpt.common.config import LoraConfigModel, ModelConfig
from fedfingpt.common.models import ModelLoadError, attach_lora, load_base_model, resolve_base


def _tiny(tiny_config, **lora):
    loaded = load_base_model(tiny_config.model)
    cfg = tiny_config.lora.model_copy(update=lora)
    return loaded, attach_lora(loaded.model, cfg)


def test_tiny_model_is_a_cached_hf_folder(tiny_config):
    first = resolve_base(tiny_config.model)
    assert (first / "config.json").is_file() and (first / "fedfingpt_model.json").is_file()
    assert resolve_base(tiny_config.model) == first
    loaded = load_base_model(ModelConfig(base=str(first)))  # the same folder loads as a plain local model
    assert loaded.base_sha256 == json.loads((first / "fedfingpt_model.json").read_text())["weights_sha256"]


def test_only_lora_is_trainable(tiny_config):
    _, model = _tiny(tiny_config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 2 layers x (q, v) x (A, B)
    assert len(get_lora_arrays(model)) == 8


def test_unknown_target_module_is_named(tiny_config):
    loaded = load_base_model(tiny_config.model)
    with pytest.raises(ModelLoadError, match=r"lora.target_modules: \['qkv'\]"):
        attach_lora(loaded.model, LoraConfigModel(target_modules=["qkv"]))


def test_bad_model_specs_are_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder"):
        resolve_base(ModelConfig(base=str(tmp_path)))
    with pytest.raises(ModelLoadError, match="no such folder or file"):
        resolve_base(ModelConfig(base=str(tmp_path / "missing")))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_base(ModelConfig(base=str(tmp_path / "m.gguf")))
    # A hub id is passed through for users who have a hub; offline, loading it fails with advice.
    assert resolve_base(ModelConfig(base="org/some-model")) == "org/some-model"
    with pytest.raises(ModelLoadError, match="Offline"):
        load_base_model(ModelConfig(base="org/some-model"))


def test_adapter_round_trip_opens_with_peft(tiny_config, tmp_path):
    from peft import PeftModel

    loaded, model = _tiny(tiny_config)
    arrays = get_lora_arrays(model)
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in arrays.items()}
    set_lora_arrays(model, arrays)
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    before = model(input_ids=ids).logits
    out = save_adapter(model, tmp_path / "adapter", base_id=loaded.base_id, base_sha256=loaded.base_sha256,
                       extra={"round": 3})
    assert not list(tmp_path.glob("adapter.tmp-*")), "no temporary folder left behind"
    manifest = read_manifest(out)
    assert manifest["round"] == 3 and manifest["lora"]["r"] == 4 and manifest["base_model"] == "tiny-random"

    fresh = load_base_model(tiny_config.model)
    plain = PeftModel.from_pretrained(fresh.model, out)  # PEFT itself opens it
    assert torch.allclose(plain(input_ids=ids).logits, before, atol=1e-5)
    again = load_base_model(tiny_config.model)
    reopened, _ = load_adapter(again.model, out, base_sha256=again.base_sha256)
    for k, v in get_lora_arrays(reopened).items():
        np.testing.assert_allclose(v, arrays[k], atol=0)


def test_adapter_mismatches_are_refused(tiny_config, tmp_path):
    loaded, model = _tiny(tiny_config)
    out = save_adapter(model, tmp_path / "a", base_id="tiny-random", base_sha256=loaded.base_sha256)
    with pytest.raises(AdapterError, match="trained on base"):
        load_adapter(load_base_model(tiny_config.model).model, out, base_sha256="0" * 64)
    # another LoRA rank: the arrays codec names the tensor and both shapes
    _, model8 = _tiny(tiny_config, r=8)
    with pytest.raises(AdapterError, match=r"has shape .* expects .*lora.r"):
        set_lora_arrays(model8, get_lora_arrays(model), source="bank-2")
    bad = dict(get_lora_arrays(model))
    bad[next(iter(bad))] = bad[next(iter(bad))] * np.nan
    with pytest.raises(AdapterError, match="NaN"):
        set_lora_arrays(model, bad)
    with pytest.raises(AdapterError, match="missing"):
        set_lora_arrays(model, dict(list(get_lora_arrays(model).items())[1:]))
    # a tampered weight file
    w = out / "adapter_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="does not match the manifest"):
        read_manifest(out)
    with pytest.raises(AdapterError, match="no fedfingpt_manifest.json"):
        read_manifest(tmp_path)


def test_adapter_of_other_shape_fails_on_load(tiny_config, tmp_path):
    loaded, model8 = _tiny(tiny_config, r=8, target_modules=["q_proj", "k_proj"])
    out = save_adapter(model8, tmp_path / "a8", base_id="tiny-random", base_sha256=loaded.base_sha256)
    other = load_base_model(tiny_config.model.model_copy(update={"tiny": tiny_config.model.tiny.model_copy(
        update={"hidden_size": 32})}))
    with pytest.raises(AdapterError, match="does not fit the base model"):
        load_adapter(other.model, out, base_sha256=loaded.base_sha256)


def test_wire_record_keeps_every_array_and_packs_them_into_a_few_objects(tiny_config):
    """An adapter crosses Flower as one array per dtype, whatever its number of matrices (each Array is an object
    Flower moves by a request of its own on the Deployment Engine), and comes back name for name."""
    from flwr.app import ArrayRecord

    from fedfingpt.common.adapter import arrays_to_record, record_to_arrays

    _, model = _tiny(tiny_config, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    arrays = get_lora_arrays(model)
    arrays["extra.scale"] = np.array(0.5, np.float64)  # another dtype, a 0-d shape
    record = arrays_to_record(arrays)
    assert len(arrays) == 2 * 4 * tiny_config.model.tiny.num_hidden_layers + 1
    assert len(record) == 2  # float32, float64
    back = record_to_arrays(record)
    assert list(back) == list(arrays)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v), k
    # a record of one array per name (built by anyone else) reads as it is
    plain = ArrayRecord({"a": Array(np.ones((2, 3), np.float32))})
    assert list(record_to_arrays(plain)) == ["a"]


def _packed(record):
    (key,) = record.keys()
    return key


@pytest.mark.parametrize("tamper, message", [
    (lambda r: r.__setitem__(_packed(r), Array(np.ones(5, np.float32))), "'a' (shape [3, 4]) is past the end"),
    (lambda r: r.__setitem__(_packed(r), Array(np.ones(99, np.float32))), "hold 87 values their layout does not name"),
    (lambda r: r.__setitem__(_packed(r)[:-4], r.pop(_packed(r))), "unreadable layout"),
])
def test_a_packed_record_that_does_not_add_up_is_refused(tamper, message):
    from fedfingpt.common.adapter import arrays_to_record, record_to_arrays

    record = arrays_to_record({"a": np.ones((3, 4), np.float32)})
    tamper(record)
    with pytest.raises(ValueError, match=re.escape(message)):
        record_to_arrays(record)


def test_a_federation_start_takes_a_saved_adapter_and_refuses_others(tiny_config, tmp_path):
    from fedfingpt.common.adapter import start_from_adapter

    loaded, model = _tiny(tiny_config, r=8)
    rng = np.random.default_rng(1)
    warm = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in get_lora_arrays(model).items()}
    set_lora_arrays(model, warm)
    out = save_adapter(model, tmp_path / "warm", base_id=loaded.base_id, base_sha256=loaded.base_sha256)
    fresh_loaded, fresh = _tiny(tiny_config, r=8)
    assert any(not np.array_equal(v, warm[k]) for k, v in get_lora_arrays(fresh).items())
    start_from_adapter(fresh, out, base_sha256=fresh_loaded.base_sha256)
    for k, v in get_lora_arrays(fresh).items():
        np.testing.assert_array_equal(v, warm[k])
    # a bank of lower rank (HetLoRA) starts from the first components
    low_loaded, low = _tiny(tiny_config, r=4)
    start_from_adapter(low, out, base_sha256=low_loaded.base_sha256)
    for k, v in get_lora_arrays(low).items():
        np.testing.assert_array_equal(v, warm[k][:4] if ".lora_A." in k else warm[k][:, :4])
    with pytest.raises(AdapterError, match="initial_adapter"):
        start_from_adapter(fresh, out, base_sha256="0" * 64)
    with pytest.raises(AdapterError, match="no fedfingpt_manifest.json"):
        start_from_adapter(fresh, tmp_path, base_sha256=fresh_loaded.base_sha256)
