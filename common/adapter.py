"""The one LoRA adapter codec: PEFT folders with a checksum manifest on disk, named numpy arrays on the wire.

`PeftModel.from_pretrained` opens every folder written here; the manifest ties it to its base model.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import tempfile
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from .models import _publish_dir, sha256_file

NamedArrays = dict[str, np.ndarray]
ADAPTER_MANIFEST = "fedfingpt_manifest.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RESIDUAL = "base_residual.safetensors"  # FedEx-LoRA: dense corrections folded into the frozen base weights


class AdapterError(ValueError):
    """An adapter that does not fit: wrong base model, wrong LoRA shape, bad checksum, missing files."""


# ------------------------------------------------------------------------------------------ arrays


def lora_state(model: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The trainable LoRA tensors by stable name (PEFT's adapter-name infix removed)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, p in model.named_parameters():
        if "lora_" in name:
            out[name.replace(".default", "")] = p
    if not out:
        raise AdapterError("the model has no LoRA parameters; attach LoRA first (common.models.attach_lora)")
    return out


def get_lora_arrays(model: torch.nn.Module) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.detach().cpu().float().numpy().copy()) for k, v in lora_state(model).items())


def check_lora_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray], source: str = "update",
                      partial: bool = False) -> None:
    """Names, shapes and finiteness must match exactly: a silent partial load would corrupt the model. With
    partial=True a named subset is allowed (strategies that share only A or only B), never an unknown name."""
    expected = lora_state(model)
    if partial:
        expected = OrderedDict((k, v) for k, v in expected.items() if k in arrays)
    missing = [k for k in expected if k not in arrays]
    extra = [k for k in arrays if k not in expected]
    if missing or extra:
        raise AdapterError(
            f"{source}: LoRA arrays do not match the model (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}); same base model and lora.target_modules?"
        )
    for k, t in expected.items():
        a = np.asarray(arrays[k])
        if tuple(a.shape) != tuple(t.shape):
            raise AdapterError(
                f"{source}: {k} has shape {tuple(a.shape)}, model expects {tuple(t.shape)} (a different lora.r?)"
            )
        if not np.all(np.isfinite(a)):
            raise AdapterError(f"{source}: {k} holds NaN or Inf values")


def set_lora_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray], source: str = "update",
                    partial: bool = False) -> None:
    check_lora_arrays(model, arrays, source, partial=partial)
    with torch.no_grad():
        for k, t in lora_state(model).items():
            if k in arrays:
                t.copy_(torch.as_tensor(np.asarray(arrays[k]), dtype=t.dtype))


def set_base_residual(model: torch.nn.Module, residual: dict[str, np.ndarray], source: str = "residual") -> None:
    """Base weight of each adapted module := its original weight + residual[module] (FedEx-LoRA); modules not
    named go back to their original weight. The original is kept once, so calls do not accumulate."""
    modules = {name: m for name, m in model.named_modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")}
    unknown = [k for k in residual if k not in modules]
    if unknown:
        raise AdapterError(f"{source}: no adapted module named {unknown[:2]}; same base model and target_modules?")
    with torch.no_grad():
        for name, m in modules.items():
            w = m.base_layer.weight
            if not hasattr(m, "_fedfingpt_w0"):
                if name not in residual:
                    continue
                m._fedfingpt_w0 = w.detach().clone()
            r = residual.get(name)
            if r is not None and tuple(r.shape) != tuple(w.shape):
                raise AdapterError(f"{source}: {name} has shape {tuple(r.shape)}, the base weight {tuple(w.shape)}")
            w.copy_(m._fedfingpt_w0 + (torch.as_tensor(np.asarray(r), dtype=w.dtype) if r is not None else 0))


def effective_delta(model: torch.nn.Module) -> "OrderedDict[str, np.ndarray]":
    """Per adapted module, what the model adds to the original base weight: residual + scale·B@A (float64)."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, m in model.named_modules():
        if not (hasattr(m, "base_layer") and hasattr(m, "lora_A")):
            continue
        w = m.base_layer.weight.detach().double()
        w0 = m._fedfingpt_w0.double() if hasattr(m, "_fedfingpt_w0") else w
        key = next(iter(m.lora_A))
        ba = m.lora_B[key].weight.detach().double() @ m.lora_A[key].weight.detach().double()
        out[name] = ((w - w0) + m.scaling[key] * ba).numpy()
    return out


# LoRA structure: which arrays form a module's pair, which a strategy shares, rank truncation (HetLoRA)

def lora_pairs(names) -> "OrderedDict[str, tuple[str, str]]":
    """module prefix -> (A name, B name) for every adapted module; ΔW = scale · B @ A with A (r, in), B (out, r)."""
    pairs: OrderedDict[str, tuple[str, str]] = OrderedDict()
    names = list(names)
    for name in names:
        if ".lora_A." in name:
            prefix = name.split(".lora_A.")[0]
            b = name.replace(".lora_A.", ".lora_B.")
            if b not in names:
                raise ValueError(f"{name} has no matching lora_B array")
            pairs[prefix] = (name, b)
    return pairs


def select_parts(arrays: NamedArrays, parts: str) -> "OrderedDict[str, np.ndarray]":
    """The arrays a strategy shares: 'AB' all, 'A' only lora_A (FedSA-LoRA), 'B' only lora_B (FFA-LoRA)."""
    keep = tuple(f".lora_{p}." for p in parts)
    return OrderedDict((k, v) for k, v in arrays.items() if any(t in k for t in keep))


def truncate_rank(arrays: NamedArrays, rank: int) -> "OrderedDict[str, np.ndarray]":
    """HetLoRA: the first `rank` components of each adapter (A's rows, B's columns)."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for k, v in arrays.items():
        out[k] = np.ascontiguousarray(v[:rank] if ".lora_A." in k else v[:, :rank]) if rank < rank_of(k, v) else v
    return out


def rank_of(name: str, v: np.ndarray) -> int:
    return v.shape[0] if ".lora_A." in name else v.shape[1]


def arrays_nbytes(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


# On the wire an adapter travels as one flat array per dtype, whose key carries the layout of what it holds (names and
# shapes, in order). Flower moves every Array of a message as an object of its own: on the Deployment Engine one HTTP
# request per object and hop (SuperLink -> SuperNode -> ClientApp), at most two at a time, with a back-off from 1 s
# while the SuperNode is still fetching. A LoRA adapter has hundreds of small matrices (240 for SmolLM2 with q, k, v,
# o at any rank), which made a 3.7 MB message take ~50 s to reach a bank on loopback; packed, it is a few objects.
# The layout sits in the key, not in an array of its own, because Flower's elementwise strategies (FedAvgM, FedAdam,
# FedYogi) apply their arithmetic to every array of a record and keep its keys.
WIRE_PACKED = "fedfingpt.packed."  # + dtype name + "." + base64(zlib(JSON [[name, shape], ...]))


def arrays_to_record(arrays: dict[str, np.ndarray]):
    """Named arrays -> Flower ArrayRecord, packed for the wire (names, dtypes, shapes and, within a dtype, order kept)."""
    from flwr.app import Array, ArrayRecord

    groups: "OrderedDict[str, tuple[list, list]]" = OrderedDict()
    for k, v in arrays.items():
        a = np.asarray(v)
        layout, parts = groups.setdefault(a.dtype.name, ([], []))
        layout.append([k, list(a.shape)])
        parts.append(a.reshape(-1))
    return ArrayRecord({
        f"{WIRE_PACKED}{dt}.{base64.urlsafe_b64encode(zlib.compress(json.dumps(layout).encode())).decode()}":
            Array(np.concatenate(parts)) for dt, (layout, parts) in groups.items()})


def record_to_arrays(record) -> "OrderedDict[str, np.ndarray]":
    """Flower ArrayRecord -> named arrays: a packed record (arrays_to_record) or one array per name (anyone else's).
    A packed array whose layout does not match its data raises ValueError naming the mismatch."""
    out = OrderedDict()
    for key in record.keys():
        if not key.startswith(WIRE_PACKED):
            out[key] = record[key].numpy()
            continue
        dtype, _, code = key[len(WIRE_PACKED):].partition(".")
        try:
            layout = json.loads(zlib.decompress(base64.urlsafe_b64decode(code)))
            flat, at = record[key].numpy().reshape(-1), 0
            for name, shape in layout:
                n = int(np.prod(shape, dtype=np.int64))
                if n < 0 or at + n > flat.size:
                    raise ValueError(f"array {name!r} (shape {shape}) is past the end of the packed {dtype} data "
                                     f"({flat.size} values)")
                out[name] = flat[at:at + n].reshape(shape)
                at += n
        except (TypeError, json.JSONDecodeError, zlib.error, binascii.Error, UnicodeDecodeError) as err:
            raise ValueError(f"packed {dtype} arrays with an unreadable layout ({err})") from err
        if at != flat.size:
            raise ValueError(f"packed {dtype} arrays hold {flat.size - at} values their layout does not name")
    return out


# ------------------------------------------------------------------------------------------ folders


def save_adapter(model, out_dir: str | Path, *, base_id: str, base_sha256: str, extra: dict | None = None,
                 base_residual: dict[str, np.ndarray] | None = None) -> Path:
    """Write a PEFT adapter folder plus manifest, atomically (temporary folder, then rename). A FedEx-LoRA
    base residual travels in the same folder, checksummed by the manifest, and load_adapter applies it."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if base_residual:
            save_file({k: np.ascontiguousarray(v) for k, v in base_residual.items()}, str(tmp / BASE_RESIDUAL))
        peft_cfg = model.peft_config["default"]
        manifest = {
            "format": "fedfingpt-adapter/1",
            "base_model": base_id,
            "base_model_sha256": base_sha256,
            "lora": {
                "r": peft_cfg.r,
                "alpha": peft_cfg.lora_alpha,
                "dropout": peft_cfg.lora_dropout,
                "target_modules": sorted(peft_cfg.target_modules),
            },
            "shapes": {k: list(v.shape) for k, v in lora_state(model).items()},
            "weights_sha256": sha256_file(tmp / ADAPTER_WEIGHTS),
            **({"base_residual_sha256": sha256_file(tmp / BASE_RESIDUAL)} if base_residual else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        (tmp / ADAPTER_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        _publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(adapter_dir: str | Path) -> dict:
    d = Path(adapter_dir)
    mf = d / ADAPTER_MANIFEST
    if not mf.is_file():
        raise AdapterError(f"{d}: no {ADAPTER_MANIFEST}; not an adapter written by fedfingpt (or a partial copy)")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterError(f"{mf}: corrupted manifest ({err})") from None
    weights = d / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise AdapterError(f"{d}: {ADAPTER_WEIGHTS} is missing")
    actual = sha256_file(weights)
    if actual != manifest.get("weights_sha256"):
        raise AdapterError(
            f"{weights}: sha256 {actual[:12]}... does not match the manifest ({str(manifest.get('weights_sha256'))[:12]}...); "
            "the file was changed or truncated: copy the adapter again"
        )
    if "base_residual_sha256" in manifest:
        res = d / BASE_RESIDUAL
        if not res.is_file() or sha256_file(res) != manifest["base_residual_sha256"]:
            raise AdapterError(f"{res}: missing or changed (sha256 differs from the manifest); copy the adapter again")
    return manifest


def read_base_residual(adapter_dir: str | Path) -> dict[str, np.ndarray]:
    """The FedEx-LoRA base residual of an adapter folder ({} when it has none); call read_manifest first."""
    from safetensors.numpy import load_file

    res = Path(adapter_dir) / BASE_RESIDUAL
    return dict(load_file(str(res))) if res.is_file() else {}


def load_adapter(base_model, adapter_dir: str | Path, *, base_sha256: str, is_trainable: bool = False):
    """Open an adapter on its base model after checking checksum, base hash and LoRA shapes."""
    from peft import PeftModel

    d = Path(adapter_dir)
    manifest = read_manifest(d)
    if manifest["base_model_sha256"] != base_sha256:
        raise AdapterError(
            f"{d}: adapter was trained on base {manifest['base_model']!r} (sha256 {manifest['base_model_sha256'][:12]}...), "
            f"but the loaded base has sha256 {base_sha256[:12]}...; load the matching model.base"
        )
    try:
        model = PeftModel.from_pretrained(base_model, d, is_trainable=is_trainable)
    except (RuntimeError, ValueError, KeyError) as err:  # size mismatch, unknown target modules
        raise AdapterError(f"{d}: adapter does not fit the base model ({str(err).splitlines()[0][:300]})") from None
    shapes = {k: list(v.shape) for k, v in lora_state(model).items()}
    if shapes != manifest["shapes"]:
        raise AdapterError(f"{d}: LoRA shapes in the model differ from the manifest; the adapter folder is inconsistent")
    if residual := read_base_residual(d):
        set_base_residual(model, residual, source=str(d / BASE_RESIDUAL))
    return model, manifest


def start_from_adapter(model: torch.nn.Module, adapter_dir: str | Path, *, base_sha256: str) -> dict:
    """Put a saved adapter's LoRA matrices into `model` (a federation's starting point, e.g. a public warm start)
    after checking its checksum and base model; a model of lower LoRA rank (a HetLoRA bank) takes the first
    components. Returns the adapter's manifest."""
    from safetensors.numpy import load_file

    d = Path(adapter_dir)
    manifest = read_manifest(d)
    if manifest["base_model_sha256"] != base_sha256:
        raise AdapterError(f"{d}: the starting adapter was trained on base {manifest['base_model']!r}, not on the "
                           "loaded base model; give federation.initial_adapter an adapter of model.base")
    if read_base_residual(d):
        raise AdapterError(f"{d}: the adapter carries a base residual (FedEx-LoRA); a federation cannot start from "
                           "it: give federation.initial_adapter a plain adapter")
    ours = get_lora_arrays(model)
    saved = peft_names_to_ours(load_file(str(d / ADAPTER_WEIGHTS)), list(ours))
    ranks = {rank_of(k, v) for k, v in ours.items()}
    if len(ranks) == 1 and (r := ranks.pop()) < max(rank_of(k, v) for k, v in saved.items()):
        saved = truncate_rank(saved, r)
    set_lora_arrays(model, saved, source=f"starting adapter {d}")
    return manifest


# ------------------------------------------------------------------------------------------ archives

def peft_names_to_ours(arrays: dict, ours: list[str]) -> dict:
    """PEFT's saved names carry no adapter infix, like ours; match by suffix to be safe across PEFT versions."""
    out = {}
    for name in ours:
        hits = [k for k in arrays if k == name or k.endswith(name.split("base_model.model.", 1)[-1])]
        if len(hits) != 1:
            raise AdapterError(f"checkpoint has no unique tensor for {name}")
        out[name] = arrays[hits[0]]
    return out


def adapter_archive(adapter_dir: str | Path) -> bytes:
    """The adapter folder as one uncompressed tar in memory (what gets sealed for an enclave); checked first."""
    import io
    import tarfile

    d = Path(adapter_dir)
    read_manifest(d)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(d.iterdir()):
            if p.is_file():
                tar.add(p, arcname=p.name)
    return buf.getvalue()


def load_adapter_archive(base_model, data: bytes, *, base_sha256: str, source: str = "sealed adapter"):
    """An adapter from an in-memory archive (never written out in clear): manifest and checksums verified as
    load_adapter does, LoRA attached from the manifest, weights and any base residual set from memory."""
    import hashlib
    import io
    import tarfile

    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load as load_safetensors

    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except tarfile.TarError as err:
        raise AdapterError(f"{source}: not an adapter archive ({err})") from None
    try:
        manifest = json.loads(files[ADAPTER_MANIFEST])
        weights = files[ADAPTER_WEIGHTS]
    except (KeyError, json.JSONDecodeError) as err:
        raise AdapterError(f"{source}: archive lacks a readable manifest or weights ({err})") from None
    if hashlib.sha256(weights).hexdigest() != manifest.get("weights_sha256"):
        raise AdapterError(f"{source}: weights do not match the manifest's sha256")
    if manifest["base_model_sha256"] != base_sha256:
        raise AdapterError(f"{source}: trained on base {manifest['base_model']!r}, not the loaded base model")
    lora = manifest["lora"]
    model = get_peft_model(base_model, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                  target_modules=lora["target_modules"], bias="none",
                                                  task_type="CAUSAL_LM"))
    set_lora_arrays(model, peft_names_to_ours(load_safetensors(weights), list(lora_state(model))), source=source)
    if BASE_RESIDUAL in files:
        if hashlib.sha256(files[BASE_RESIDUAL]).hexdigest() != manifest.get("base_residual_sha256"):
            raise AdapterError(f"{source}: base residual does not match the manifest's sha256")
        set_base_residual(model, dict(load_safetensors(files[BASE_RESIDUAL])), source=source)
    return model, manifest
