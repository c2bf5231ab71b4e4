"""Checkpoints: safetensors weights, JSON metadata, and a tensors-only training state.

Layout of one checkpoint (a folder)::

    out_dir/ckpt/                 latest checkpoint (the one `resume` continues from)
        model.safetensors         weights; a tied tensor is stored once (see "tied" in meta.json)
        meta.json                 model class + config, tokenizer, training config, step, ...
        train_state.pt            optimizer, grad scaler, RNG states, history (optional)
    out_dir/best/                 the weights with the best validation loss so far (no train_state)

Why this shape:
- safetensors cannot run code when loaded, and `train_state.pt` is read with
  `torch.load(weights_only=True)`, so opening a checkpoint someone sent you never unpickles
  arbitrary objects. The training state is kept to tensors, dicts, lists and numbers for that.
- A checkpoint is written into a temporary sibling folder (every file fsynced) and swapped in
  with `os.replace`; the previous checkpoint is only deleted after the new one is in place. A
  crash mid-write leaves the old checkpoint (or its `.old` copy, which loading falls back to),
  never a half-written one.
- Weights are moved to CPU before writing and loaded on CPU first, so a checkpoint written on a
  GPU opens on a laptop. `_orig_mod.` (torch.compile) and `module.` (DistributedDataParallel)
  prefixes are stripped on both ends.
- The model is rebuilt from its class name through `MODEL_REGISTRY` ("name" -> "module:Class",
  imported lazily), and from its config: a dataclass at `model.config` (rebuilt from the type
  annotation of the class's first `__init__` argument, or `Class.config_class`) or a dict of
  keyword arguments (`model.init_kwargs`, or `model_config=` when saving).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import fsync_dir as _fsync_dir
from .atomic import write_synced as _write_bytes  # one name, so a test can simulate a full disk

__all__ = [
    "BEST_DIR", "LATEST_DIR", "MODEL_REGISTRY", "CheckpointError", "CheckpointInfo", "build_model",
    "clean_stale_files", "latest_checkpoint", "load_checkpoint", "load_train_state", "prepare_out_dir",
    "read_meta", "register_model",
    "resolve_checkpoint", "save_checkpoint", "strip_prefixes", "unwrap_model",
]

log = logging.getLogger(__name__)

FORMAT = "minigpt-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "train_state.pt"
LATEST_DIR = "ckpt"
BEST_DIR = "best"

# name -> "module:Class"; strings so that this works before (and without importing) those modules.
MODEL_REGISTRY: dict[str, str] = {
    "GPT": "minigpt.model:GPT",
    "Transformer": "minigpt.seq2seq:Transformer",
    "BigramLM": "minigpt.baselines:BigramLM",
    "MLPLM": "minigpt.baselines:MLPLM",
}
TOKENIZER_REGISTRY: dict[str, str] = {
    "CharTokenizer": "minigpt.tokenizer:CharTokenizer",
    "BPETokenizer": "minigpt.tokenizer:BPETokenizer",
}
_PREFIXES = ("_orig_mod.", "module.")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, foreign, or does not fit the model."""


@dataclass
class CheckpointInfo:
    """Everything `load_checkpoint` read besides the weights."""

    path: Path  # the checkpoint folder
    model_class: str  # registry name, e.g. "GPT"
    model_config: dict[str, Any] | None  # as saved (a dict)
    tokenizer: Any  # rebuilt tokenizer object, or None
    tokenizer_dict: dict[str, Any] | None  # the raw saved tokenizer data
    train_config: dict[str, Any] | None
    step: int | None
    best_val_loss: float | None
    minigpt_version: str | None
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form extra metadata
    has_train_state: bool = False


def register_model(name: str, target: str) -> None:
    """Make `load_checkpoint` able to rebuild class `name` from "module:Class"."""
    if ":" not in target:
        raise ValueError(f"target must look like 'package.module:ClassName', got {target!r}")
    MODEL_REGISTRY[name] = target


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        else:
            return model


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop leading `_orig_mod.` / `module.` from every key (any order, repeated)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _model_config(model: nn.Module) -> tuple[str | None, dict[str, Any] | None]:
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return "dataclass", dataclasses.asdict(config)
    kwargs = getattr(model, "init_kwargs", None)
    if isinstance(kwargs, dict):
        return "kwargs", dict(kwargs)
    if isinstance(config, dict):
        return "kwargs", dict(config)
    return None, None


def _tokenizer_payload(tokenizer: Any) -> dict[str, Any] | None:
    if tokenizer is None:
        return None
    if isinstance(tokenizer, dict):
        return {"class": None, "data": tokenizer}
    if not hasattr(tokenizer, "to_dict"):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no to_dict(); pass a dict instead")
    return {"class": type(tokenizer).__name__, "data": tokenizer.to_dict()}


def _weights_to_save(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CPU state dict with shared tensors stored once; returns (tensors, {alias: kept_name})."""
    state = strip_prefixes(unwrap_model(model).state_dict())
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        # Same storage, offset, shape and strides = the same tensor (weight tying); safetensors
        # refuses to write shared memory, so keep the first name and remember the alias.
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() > 0 and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, tied


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    tokenizer: Any = None,
    train_config: Any = None,
    train_state: dict[str, Any] | None = None,
    step: int | None = None,
    best_val_loss: float | None = None,
    model_config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at `path` atomically and return it.

    `train_config` may be a dataclass or a dict. `train_state` must hold only tensors, dicts,
    lists, tuples, strings, numbers, bools and None (it is reloaded with weights_only=True).
    `model_config` overrides the config read from the model (a dict of constructor kwargs).
    """
    from safetensors.torch import save as st_save

    import minigpt

    path = Path(path)
    if path.suffix == ".safetensors":
        raise ValueError(f"save_checkpoint takes a folder, got the file name {path}; use {path.parent}")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = unwrap_model(model)
    tensors, tied = _weights_to_save(raw)
    kind, config = ("kwargs", dict(model_config)) if model_config is not None else _model_config(raw)
    if dataclasses.is_dataclass(train_config) and not isinstance(train_config, type):
        train_config = dataclasses.asdict(train_config)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "minigpt_version": getattr(minigpt, "__version__", None),
        "model_class": type(raw).__name__,
        "model_config_kind": kind,
        "model_config": config,
        "tied": tied,
        "tokenizer": _tokenizer_payload(tokenizer),
        "train_config": train_config,
        "step": step,
        "best_val_loss": best_val_loss,
        "metadata": metadata or {},
    }
    _check_json(meta)

    files = {WEIGHTS_FILE: st_save(tensors, metadata={"format": "pt", "producer": FORMAT})}
    if train_state is not None:
        import io

        buf = io.BytesIO()
        torch.save(train_state, buf)
        files[STATE_FILE] = buf.getvalue()
    meta["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    meta["sha256"]["model"] = _model_digest(meta)
    files[META_FILE] = json.dumps(meta, indent=2, default=_json_default).encode()  # last: marks it complete
    return _write_folder(path, files)


def _check_json(meta: dict[str, Any]) -> None:
    try:
        json.dumps(meta, default=_json_default)
    except TypeError as e:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {e}") from e


def _write_folder(path: Path, files: dict[str, bytes]) -> Path:
    """Write `files` (in order, each fsynced) into a temp sibling folder and swap it in with `os.replace`;
    the previous folder stays as `.NAME.old` until the new one is in place (see `latest_checkpoint`)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, data in files.items():
        _write_bytes(tmp / name, data)
    _fsync_dir(tmp)
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, tuple | set):
        return list(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.name in (WEIGHTS_FILE, META_FILE, STATE_FILE):
        path = path.parent
    if path.is_dir() and (path / META_FILE).exists():
        return path
    old = path.with_name(f".{path.name}.old")
    if (old / META_FILE).exists():  # a crash happened between the two renames of a save
        log.warning("checkpoint %s is missing; using the previous copy %s", path, old)
        return old
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file; a minigpt checkpoint is a folder holding {WEIGHTS_FILE} and {META_FILE}"
        )
    raise CheckpointError(f"no checkpoint at {path} (expected a folder with {META_FILE} and {WEIGHTS_FILE})")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed meta.json of a checkpoint folder, every field checked (see `validate_meta`)."""
    folder = _resolve(path)
    try:
        meta = json.loads(_read_regular(folder / META_FILE, _MAX_META_BYTES))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{folder / META_FILE} is unreadable or truncated ({e}); re-save it") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / META_FILE} is not a minigpt checkpoint (no format={FORMAT!r})")
    validate_meta(meta, folder)
    return meta


_MAX_META_BYTES = 256 * 2**20  # a BPE vocabulary of 100k merges is ~10 MB
_MAX_DIM = 2**20  # any size in a model config (width, vocabulary, heads, ...)
_MAX_CONTEXT = 2**16  # block_size / max_len: position tables of this many rows are allocated at build
# type rules of meta.json: field -> (allowed types, what the message says)
_META_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "format_version": ((int,), "an integer"),
    "minigpt_version": ((str, type(None)), "a string"),
    "model_class": ((str,), "a string"),
    "model_config_kind": ((str, type(None)), "'dataclass', 'kwargs' or null"),
    "model_config": ((dict, type(None)), "an object"),
    "tied": ((dict, type(None)), "an object {alias: name}"),
    "tokenizer": ((dict, type(None)), "an object"),
    "train_config": ((dict, type(None)), "an object"),
    "step": ((int, type(None)), "an integer >= 0"),
    "best_val_loss": ((int, float, type(None)), "a finite number"),
    "metadata": ((dict, type(None)), "an object"),
    "sha256": ((dict, type(None)), "an object {file: hex digest}"),
}


def _read_regular(file: Path, limit: int) -> bytes:
    """The bytes of a regular file no larger than `limit` (not a device, FIFO or symlink loop)."""
    import stat

    try:
        st = file.stat()
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{file} is not a regular file; a checkpoint holds plain files")
        if st.st_size > limit:
            raise CheckpointError(f"{file} is {st.st_size:,} bytes, more than a checkpoint file may hold ({limit:,})")
        return file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {e.strerror or e}") from e


def validate_meta(meta: dict[str, Any], folder: str | os.PathLike = "checkpoint") -> None:
    """Check the type and range of every field of a meta.json; raise CheckpointError naming the first bad one."""
    where = f"{folder}/{META_FILE}"
    for key, value in meta.items():
        if key == "format":
            continue
        if key not in _META_TYPES:
            raise CheckpointError(f"{where}: unknown field {key!r}; the file was not written by minigpt")
        types, rule = _META_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise CheckpointError(f"{where}: {key} must be {rule}, got {type(value).__name__} {value!r:.60}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer minigpt (format {meta['format_version']}); "
                              "upgrade minigpt")
    if meta.get("format_version", 1) < 1:
        raise CheckpointError(f"{where}: format_version must be an integer >= 1, got {meta['format_version']}")
    if meta.get("step") is not None and not 0 <= meta["step"] <= 2**40:
        raise CheckpointError(f"{where}: step must be in [0, 2**40], got {meta['step']}")
    loss = meta.get("best_val_loss")
    if loss is not None and not math.isfinite(loss):
        raise CheckpointError(f"{where}: best_val_loss must be a finite number, got {loss}")
    for key in ("tied", "sha256"):
        if any(not isinstance(k, str) or not isinstance(v, str) for k, v in (meta.get(key) or {}).items()):
            raise CheckpointError(f"{where}: {key} must map names to strings")
    config = meta.get("model_config") or {}
    for key, value in config.items():
        _check_config_value(where, key, value)
    tok = meta.get("tokenizer")
    if tok is not None and not (isinstance(tok.get("data"), dict) and isinstance(tok.get("class"), str | None)):
        raise CheckpointError(f"{where}: tokenizer must be {{'class': name, 'data': {{...}}}}")


def _check_config_value(where: str, key: str, value: Any) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckpointError(f"{where}: model_config.{key} must be finite, got {value}")
    if isinstance(value, int):
        limit = _MAX_CONTEXT if key in ("block_size", "max_len", "max_seq_len") else _MAX_DIM
        if not -1 <= value <= limit:
            raise CheckpointError(f"{where}: model_config.{key} = {value} is out of range [0, {limit:,}]; "
                                  "the checkpoint is damaged or was not written by minigpt")
    elif not isinstance(value, float | list | dict):
        raise CheckpointError(f"{where}: model_config.{key} has type {type(value).__name__}")


def _read_weights(folder: Path, meta: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint, their sha256 checked against meta.json, every float tensor finite."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    file = folder / WEIGHTS_FILE
    data = _read_regular(file, _memory_bytes())  # a (sparse) file larger than memory: refused, not read
    try:
        tensors = st_load(data)  # always CPU tensors; parsing runs no code
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{file} is truncated or not a safetensors file ({e}); the write was probably interrupted. "
            "Use another checkpoint (e.g. the best/ folder) or retrain."
        ) from e
    _verify_sha256(file, data, meta)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{file}: tensor {name} holds NaN/Inf values; the checkpoint is damaged "
                                  "(a diverged run never saves such weights)")
    return tensors


def _memory_bytes() -> int:
    """This machine's physical memory (1 TiB where unknown): no weights file larger than it can load."""
    try:
        return min(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), 2**40)
    except (ValueError, OSError, AttributeError):
        return 2**40


def _model_digest(meta: dict[str, Any]) -> str:
    """sha256 of what rebuilds the model (class, config, tied names): an edit there is caught at load."""
    keys = ("model_class", "model_config_kind", "model_config", "tied")
    text = json.dumps({k: meta.get(k) for k in keys}, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _verify_sha256(file: Path, data: bytes, meta: dict[str, Any] | None) -> None:
    expected = ((meta or {}).get("sha256") or {}).get(file.name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointError(f"{file} does not match the sha256 recorded in {META_FILE}: the file was changed "
                              "or damaged after saving; use another checkpoint or retrain")


def _config_class(cls: type[nn.Module]) -> type | None:
    explicit = getattr(cls, "config_class", None)
    if explicit is not None:
        return explicit
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    if not params:
        return None
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable forward references: fall through
        return None
    hint = hints.get(params[0].name)
    for candidate in (hint, *typing.get_args(hint)):  # `Config | int` unions: take the dataclass
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _config_diff(saved: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    saved, current = saved or {}, current or {}
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<missing>"), current.get(key, "<missing>")
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            diffs.append(f"{key}: checkpoint={a!r} model={b!r}")
    return diffs


def build_model(meta: dict[str, Any], device: str | torch.device | None = None) -> nn.Module:
    """Construct an untrained model of the class and config recorded in `meta` (on `device`; "meta"
    builds it without allocating memory, to compare its shapes with a weights file first)."""
    name = meta.get("model_class")
    if name not in MODEL_REGISTRY:
        raise CheckpointError(
            f"model class {name!r} is not in minigpt.checkpoint.MODEL_REGISTRY "
            f"(known: {', '.join(sorted(MODEL_REGISTRY))}); call register_model({name!r}, 'module:Class') "
            "or pass model= to load_checkpoint"
        )
    try:
        cls = _import(MODEL_REGISTRY[name])
    except (ImportError, AttributeError) as e:
        raise CheckpointError(f"cannot import {MODEL_REGISTRY[name]} for model class {name!r}: {e}") from e
    kind, config = meta.get("model_config_kind"), meta.get("model_config")
    if not isinstance(config, dict) or kind not in ("dataclass", "kwargs"):
        raise CheckpointError(f"the checkpoint has no model config for {name}; pass model= to load_checkpoint")
    config_cls = _config_class(cls) if kind == "dataclass" else None
    if kind == "dataclass" and config_cls is None:
        raise CheckpointError(f"cannot find the config dataclass of {name}; pass model= to load_checkpoint")
    if config_cls is not None:
        unknown = sorted(set(config) - {f.name for f in dataclasses.fields(config_cls)})
        if unknown:
            raise CheckpointError(f"model_config of {name} has unknown keys {unknown}; the checkpoint was edited "
                                  "or written by another version")
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return cls(config_cls(**config)) if config_cls is not None else cls(**config)
    except CheckpointError:
        raise
    except Exception as e:  # the config's own validation (ValueError), or wrong types (TypeError)
        raise CheckpointError(f"the saved config of {name} is invalid: {type(e).__name__}: {e}") from e


def _check_shapes(folder: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  model_name: str, strict: bool, config: dict[str, Any] | None = None) -> None:
    """The weights file must hold exactly the model's tensors, with the model's shapes. With the saved
    `config` (a model rebuilt from meta.json), the message names the config fields the weights contradict."""
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in tensors.items()
             if k in expected and expected[k].shape != v.shape]
    if wrong:
        blamed = _blame(config, wrong)
        raise CheckpointError(f"architecture mismatch with {folder}: " + blamed + "; ".join(
            f"{k}: checkpoint {have} vs model {want}" for k, have, want in wrong[:8]))
    kinds = [f"{k}: {v.dtype} where the model holds {expected[k].dtype}" for k, v in tensors.items()
             if k in expected and v.is_floating_point() != expected[k].is_floating_point()]
    if kinds:  # integer weights would be copied into float parameters without a word
        raise CheckpointError(f"weights in {folder} have the wrong kind of number: " + "; ".join(kinds[:8]))
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if strict and (missing or unexpected):
        layers = _layer_counts(tensors), _layer_counts(expected)
        blamed = "".join(f"model_config.{k} = {v} but the weights hold {layers[0].get(k2, 0)} layers; "
                         for k, v in (config or {}).items() for k2 in layers[1]
                         if "layer" in k and v == layers[1][k2] != layers[0].get(k2, 0))
        raise CheckpointError(f"weights in {folder} do not fit {model_name}: {blamed}missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")


def _blame(config: dict[str, Any] | None, wrong: list[tuple[str, tuple, tuple]]) -> str:
    """'model_config.block_size = 32 does not fit the weights; ' for each integer field equal to a size the
    model needs and the weights do not have (e.g. block_size vs the rows of a learned position table)."""
    sizes = {w for _, have, want in wrong for h, w in zip(have, want) if h != w}
    sizes |= {w for _, have, want in wrong if len(have) != len(want) for w in want}
    named = [f"model_config.{k} = {v} does not fit the weights" for k, v in (config or {}).items()
             if isinstance(v, int) and not isinstance(v, bool) and v in sizes]
    return "".join(n + "; " for n in named)


def _layer_counts(state: dict[str, Any]) -> dict[str, int]:
    """{'transformer.h': 2, ...}: how many numbered blocks each module list holds."""
    found: dict[str, set[str]] = {}
    for key in state:
        m = re.match(r"(.*?)\.(\d+)\.", key)
        if m:
            found.setdefault(m.group(1), set()).add(m.group(2))
    return {k: len(v) for k, v in found.items()}


def _rebuild_tokenizer(payload: dict[str, Any] | None) -> Any:
    if not payload or payload.get("class") not in TOKENIZER_REGISTRY:
        return None
    try:
        cls = _import(TOKENIZER_REGISTRY[payload["class"]])
    except (ImportError, AttributeError) as e:
        log.warning("could not rebuild tokenizer %s: %s", payload.get("class"), e)
        return None
    try:
        return cls.from_dict(payload["data"])
    except Exception as e:  # crafted or damaged data: wrong types, missing keys, a bad vocabulary
        raise CheckpointError(f"the saved {payload['class']} is damaged ({type(e).__name__}: {e})") from e


def _check_architecture(folder: Path, meta: dict[str, Any], raw: nn.Module) -> None:
    """Raise CheckpointError naming what differs between the saved model and `raw`."""
    if type(raw).__name__ != meta.get("model_class"):
        raise CheckpointError(
            f"{folder} holds a {meta.get('model_class')} but the model given is a {type(raw).__name__}"
        )
    _, current = _model_config(raw)
    if meta.get("model_config") is not None and current is not None:
        diffs = _config_diff(meta["model_config"], current)
        if diffs:
            raise CheckpointError(
                f"architecture mismatch with {folder}: " + "; ".join(diffs)
                + ". Build the model with the checkpoint's config (load_checkpoint without model=)."
            )


def _info(folder: Path, meta: dict[str, Any]) -> CheckpointInfo:
    tok = meta.get("tokenizer")
    return CheckpointInfo(
        path=folder,
        model_class=str(meta.get("model_class", "")),
        model_config=meta.get("model_config"),
        tokenizer=_rebuild_tokenizer(tok),
        tokenizer_dict=(tok or {}).get("data"),
        train_config=meta.get("train_config"),
        step=meta.get("step"),
        best_val_loss=meta.get("best_val_loss"),
        minigpt_version=meta.get("minigpt_version"),
        metadata=meta.get("metadata") or {},
        has_train_state=(folder / STATE_FILE).exists(),
    )


def load_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    model: nn.Module | None = None,
    strict: bool = True,
) -> tuple[nn.Module, CheckpointInfo]:
    """Load a checkpoint folder (or its model.safetensors) -> (model on `device`, info).

    Without `model`, the model is rebuilt from the metadata through `MODEL_REGISTRY`. With
    `model`, the weights are loaded into it (after checking that its config matches the saved
    one; a mismatch raises CheckpointError naming the differing fields). The returned model is
    in eval mode.
    """
    folder = _resolve(path)
    meta = read_meta(folder)
    expected = (meta.get("sha256") or {}).get("model")
    if expected is not None and expected != _model_digest(meta):
        raise CheckpointError(f"{folder}/{META_FILE}: the model description (class, config, tied weights) was "
                              "edited after saving; restore it, or re-save the model with save_checkpoint")
    tensors = strip_prefixes(_read_weights(folder, meta))
    for alias, kept in (meta.get("tied") or {}).items():
        if kept not in tensors:
            raise CheckpointError(f"{folder}/{META_FILE}: tied weight {alias!r} points at {kept!r}, "
                                  "which the weights file does not hold")
        tensors[alias] = tensors[kept]
    if model is None:
        _check_layer_counts(folder, meta, tensors)
        skeleton = build_model(meta, device="meta")  # no memory: shapes first, then the real build
        _check_shapes(folder, tensors, skeleton.state_dict(), type(skeleton).__name__, strict,
                      meta.get("model_config"))
        model = build_model(meta)
    else:
        _check_architecture(folder, meta, unwrap_model(model))
    raw = unwrap_model(model)
    _check_shapes(folder, tensors, raw.state_dict(), type(raw).__name__, strict)
    raw.load_state_dict(tensors, strict=False)
    model.to(device)
    model.eval()
    return model, _info(folder, meta)


def _check_layer_counts(folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """A count of layers cannot exceed the number of tensors (building 10**6 empty blocks takes minutes)."""
    for key, value in (meta.get("model_config") or {}).items():
        if "layer" in key and isinstance(value, int) and value > len(tensors):
            raise CheckpointError(f"{folder}/{META_FILE}: model_config.{key} = {value} but the weights file "
                                  f"holds only {len(tensors)} tensors; the checkpoint is damaged")


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """The training state saved beside the weights, read with `torch.load(weights_only=True)`, its
    sha256 and the type and range of every field checked."""
    folder = _resolve(path)
    file = folder / STATE_FILE
    if not file.exists():
        raise CheckpointError(f"{folder} has no {STATE_FILE} (a best/ or export checkpoint); cannot resume")
    meta = read_meta(folder)
    data = _read_regular(file, 2**40)
    import io

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors from truncation, forbidden globals
        raise CheckpointError(
            f"{file} is truncated or not a minigpt training state ({type(e).__name__}: {e}); "
            "it is only ever loaded with weights_only=True"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{file} is not a minigpt training state (got {type(state).__name__})")
    _verify_sha256(file, data, meta)
    _validate_train_state(file, state, meta)
    return state


# field -> (check, rule) of a training state written by minigpt.train.Trainer
_STATE_RULES: dict[str, tuple[Any, str]] = {
    "step": (lambda v: _is_int(v) and 0 <= v <= 2**40, "an integer in [0, 2**40]"),
    "optimizer": (lambda v: isinstance(v, dict), "an optimizer state_dict"),  # its shape: load_state_dict
    "history": (lambda v: isinstance(v, dict) and isinstance(v.get("rows", []), list)
                and all(isinstance(r, dict) for r in v.get("rows", [])), "{'rows': [...]}"),
    "rng": (lambda v: isinstance(v, dict) or (isinstance(v, list) and v and all(isinstance(r, dict) for r in v)),
            "a list of RNG states"),
    "data_rng": (lambda v: isinstance(v, list) and v and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                            for t in v), "a list of generator states"),
    "best_val_loss": (lambda v: v is None or (isinstance(v, int | float) and math.isfinite(v)), "a finite number"),
    "evals_without_improvement": (lambda v: _is_int(v) and 0 <= v <= 2**40, "an integer >= 0"),
    "tokens_seen": (lambda v: _is_int(v) and 0 <= v <= 2**62, "an integer >= 0"),
    "elapsed": (lambda v: isinstance(v, int | float) and math.isfinite(v) and v >= 0, "a number of seconds >= 0"),
    "world_size": (lambda v: _is_int(v) and 1 <= v <= 2**16, "an integer >= 1"),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_train_state(file: Path, state: dict[str, Any], meta: dict[str, Any]) -> None:
    for key, (ok, rule) in _STATE_RULES.items():
        if key in state and not ok(state[key]):
            raise CheckpointError(f"{file}: {key} must be {rule}; the training state is damaged")
    if meta.get("step") is not None and "step" in state and state["step"] != meta["step"]:
        raise CheckpointError(f"{file}: step {state['step']} differs from meta.json's {meta['step']}; "
                              "the two files do not belong together")
    rows = state.get("history", {}).get("rows", [])
    last = state.get("step", 2**40)
    if any(not _is_int(r.get("step", 0)) or not 0 <= r.get("step", 0) <= last for r in rows):
        raise CheckpointError(f"{file}: the history has steps beyond the saved step {state['step']}")
    if "data_rng" in state and not len(state.get("rng", [])) == len(state["data_rng"]) == state.get("world_size", 1):
        raise CheckpointError(f"{file}: rng, data_rng and world_size disagree; the training state is damaged")


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from in `out_dir` (its `ckpt/` folder), or None."""
    out_dir = Path(out_dir)
    for candidate in (out_dir / LATEST_DIR, out_dir / f".{LATEST_DIR}.old"):
        if (candidate / META_FILE).exists() and (candidate / WEIGHTS_FILE).exists():
            return candidate
    return None


def prepare_out_dir(out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Check a run's output folder before any work is done, and return it.

    Refused with one CheckpointError: a path that is a file, a symlink loop, a folder that cannot
    be written, or (unless `resume` or `overwrite`) a folder that already holds a run. With
    `overwrite`, the old run's checkpoints and history are removed (nothing else in the folder).
    Stale temporary folders of interrupted saves are cleaned up.
    """
    if not str(out_dir).strip():
        raise CheckpointError("--out-dir is empty; name a folder (an empty value would write into the current one)")
    out = Path(out_dir)
    try:
        for sub in (out / LATEST_DIR, out / BEST_DIR):  # a save replaces these: they must be real folders
            if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
                raise CheckpointError(f"{sub} is a file or a symlink, not a checkpoint folder; move it away or "
                                      "choose another --out-dir")
        if out.is_symlink() and not out.exists():
            raise CheckpointError(f"--out-dir {out} is a broken symlink or a symlink loop; pick another folder")
        if out.exists() and not out.is_dir():
            raise CheckpointError(f"--out-dir {out} is a file, not a folder; pick another folder")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"--out-dir {out} cannot be written ({e.strerror or e}); pick another folder") from e
    clean_stale_files(out)
    held = latest_checkpoint(out) or (out / BEST_DIR if (out / BEST_DIR / META_FILE).exists() else None)
    if held is not None and not resume and not overwrite:
        raise CheckpointError(f"{out} already holds a run ({held}); pass --resume (resume=True) to continue it, "
                              "--overwrite (overwrite=True) to replace it, or choose another --out-dir (out_dir=)")
    if held is not None and overwrite and not resume:
        for name in (LATEST_DIR, BEST_DIR, f".{LATEST_DIR}.old", f".{BEST_DIR}.old"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("history.csv", "history.json"):
            (out / name).unlink(missing_ok=True)
    return out


def clean_stale_files(out_dir: str | os.PathLike) -> list[Path]:
    """Remove temporary leftovers of saves killed half-way (`.NAME.tmp-PID` folders of processes that are
    gone, `.old` copies beside a complete checkpoint, `.FILE.PID-TID.tmp` files); returns what was removed."""
    out = Path(out_dir)
    removed = []
    for p in list(out.iterdir()) if out.is_dir() else []:
        name = p.name
        stale = False
        if name.startswith(".") and ".tmp-" in name:
            pid = name.rsplit(".tmp-", 1)[1]
            stale = not (pid.isdigit() and _pid_alive(int(pid)))
        elif name.startswith(".") and name.endswith(".old") and p.is_dir():
            stale = (out / name[1:-4] / META_FILE).is_file()  # the new copy is complete
        elif name.startswith(".") and name.endswith(".tmp") and p.is_file():
            pid = name.rsplit(".", 2)[-2].split("-")[0]
            stale = not (pid.isdigit() and _pid_alive(int(pid)))
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder a user means: the folder itself, its model.safetensors or meta.json, or a
    `minigpt train --out-dir` (its best/ weights, else its latest ckpt/). Every command that reads a
    checkpoint (generate, serve, analyze-attention, export) resolves its argument here.

    Raises CheckpointError listing every place it looked.
    """
    p = Path(path).expanduser()
    if p.name in (WEIGHTS_FILE, META_FILE) and not p.is_dir():
        p = p.parent
    candidates = [p, p / BEST_DIR, p / LATEST_DIR]
    for c in candidates:
        if (c / META_FILE).is_file():
            return c
    for c in candidates:  # a crash between the two renames of a save leaves only the `.old` copy
        old = c.with_name(f".{c.name}.old")
        if (old / META_FILE).is_file():
            log.warning("checkpoint %s is missing; using the previous copy %s", c, old)
            return old
    looked = ", ".join(str(c / META_FILE) for c in candidates)
    hint = ""
    if p.suffix in (".pt", ".pth", ".bin"):
        hint = f" minigpt checkpoints are folders ({WEIGHTS_FILE} + {META_FILE}), not {p.suffix} files."
    raise CheckpointError(
        f"no checkpoint found at {p.resolve()} (looked for {looked}).{hint} Train one first, e.g. "
        f"`minigpt train --max-time 60 --out-dir {p}`, then pass that folder"
    )
