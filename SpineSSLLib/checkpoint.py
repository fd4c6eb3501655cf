"""Model checkpoints as safetensors + JSON; never pickle.

A checkpoint is a folder::

    checkpoint.json        config, epoch, metrics, code version, file hashes   (written last)
    model.safetensors      weights (DDP / compile prefixes removed)
    training.safetensors   optional: optimizer tensors (momentum buffers) and RNG states
    training.json          optional: optimizer hyper-parameters, scheduler / loop state, RNG

The whole folder is replaced atomically: a new checkpoint is written into a hidden sibling
``.<name>.partial-*`` and swapped in by two renames (old folder -> ``.<name>.old``, new folder ->
``<name>``).  A run killed at any moment therefore leaves either the previous checkpoint or the new
one: if it died between the two renames, loading falls back to ``.<name>.old`` (and the next save
tidies up).  ``checkpoint.json`` is written last and records the SHA-256 of the other files, so a
file damaged later is still detected on load (``CheckpointError``).
Loading reads tensors with ``safetensors`` and metadata with ``json`` only: nothing is
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import atomic_path, current_umask, write_json
from .errors import CheckpointError

SCHEMA = "spinessl.checkpoint/1"
META, WEIGHTS, TRAIN_T, TRAIN_J = "checkpoint.json", "model.safetensors", "training.safetensors", "training.json"


def _strip(k: str) -> str:
    for p in ("module.", "_orig_mod."):
        while k.startswith(p):
            k = k[len(p):]
    return k


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of ``model`` on CPU, with DDP/compile prefixes removed, contiguous and unshared."""
    out = {}
    for k, v in model.state_dict().items():
        out[_strip(k).replace("._orig_mod.", ".")] = v.detach().to("cpu").contiguous().clone()
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    return _sha256(path)


def _load_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError("file missing", path)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"not a readable safetensors file ({str(e).splitlines()[0][:120]})", path)


# --------------------------------------------------------------------------- optimizer / RNG

def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, state_json = {}, {}
    for idx, st in sd["state"].items():
        entry = {}
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{idx}.{key}"] = val.detach().to("cpu").contiguous().clone()
            else:
                entry[key] = val
        state_json[str(idx)] = entry
    return tensors, {"param_groups": sd["param_groups"], "state": state_json}


def _unflatten_optimizer(tensors: dict, js: dict, device) -> dict:
    state: dict = {}
    for idx, entry in js["state"].items():
        state[int(idx)] = dict(entry)
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v.to(device)
    return {"state": state, "param_groups": js["param_groups"]}


def capture_rng() -> tuple[dict, dict]:
    """RNG states of torch (CPU + CUDA), numpy's legacy global generator and ``random``."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    v, st, g = random.getstate()
    js = {"numpy": [name, int(pos), int(has_gauss), float(gauss)], "python": [v, list(st), g]}
    return tensors, js


def restore_rng(tensors: dict, js: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to("cpu", torch.uint8))
    if torch.cuda.is_available():
        states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in states])
    if "rng.numpy" in tensors and "numpy" in js:
        name, pos, has_gauss, gauss = js["numpy"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "python" in js:
        v, st, g = js["python"]
        random.setstate((v, tuple(st), g))


# --------------------------------------------------------------------------- save / load

def save_checkpoint(directory, model: nn.Module, config_dict: dict, *, epoch: int | None = None,
                    metrics: dict | None = None, optimizer: torch.optim.Optimizer | None = None,
                    train_state: dict | None = None, rng: bool = False, extra: dict | None = None) -> Path:
    """Write a checkpoint folder.  ``config_dict`` is JSON (e.g. ``{"model": ModelConfig.to_dict(),
    "num_classes": 7, "in_hw": [224, 224], "task": "pretrain"}``); ``train_state`` is JSON for
    the training loop (scheduler, best loss, ...); ``rng=True`` stores all RNG states so a resumed
    run continues exactly.  Returns the folder."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        _write_checkpoint(d, model, config_dict, epoch=epoch, metrics=metrics, optimizer=optimizer,
                          train_state=train_state, rng=rng, extra=extra)
        _swap_in(d, final)
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return final


def _old(d: Path) -> Path:
    return d.with_name(f".{d.name}.old")


def _swap_in(new: Path, final: Path) -> None:
    """Replace the folder ``final`` by the complete folder ``new`` (two renames; see the module
    docstring).  Files in ``final`` that are not part of a checkpoint (a model card...) are kept."""
    old = _old(final)
    if final.is_dir():
        for p in final.iterdir():
            if p.name not in (META, WEIGHTS, TRAIN_T, TRAIN_J):
                (shutil.copytree if p.is_dir() else shutil.copy2)(p, new / p.name)
        if old.exists():  # a stale copy from an earlier interrupted save; final is complete
            shutil.rmtree(old)
        os.replace(final, old)
    elif final.exists():
        raise CheckpointError("exists and is not a folder", final)
    os.chmod(new, 0o777 & ~current_umask())  # mkdtemp makes 0700
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)


def _resolve(directory) -> Path:
    """The folder holding the checkpoint: ``directory``, or its ``.old`` twin when a save was
    interrupted between its two renames."""
    d = Path(directory)
    if not (d / META).is_file() and (_old(d) / META).is_file():
        return _old(d)
    return d


def _write_checkpoint(d: Path, model, config_dict, *, epoch, metrics, optimizer, train_state, rng, extra) -> None:
    hashes = {WEIGHTS: _save_tensors(d / WEIGHTS, model_state(model))}
    if optimizer is not None or train_state is not None or rng:
        tensors, js = {}, {"train_state": train_state or {}}
        if optimizer is not None:
            t, o = _flatten_optimizer(optimizer)
            tensors.update(t)
            js["optimizer"] = o
        if rng:
            t, r = capture_rng()
            tensors.update(t)
            js["rng"] = r
        hashes[TRAIN_T] = _save_tensors(d / TRAIN_T, tensors)
        write_json(d / TRAIN_J, js)
        hashes[TRAIN_J] = _sha256(d / TRAIN_J)
    meta = {"schema": SCHEMA, "code_version": __version__, "created_unix": int(time.time()),
            "config": config_dict, "epoch": epoch, "metrics": metrics or {}, "files": hashes}
    if extra:
        meta["extra"] = extra
    write_json(d / META, meta)


def read_meta(directory) -> dict:
    """The ``checkpoint.json`` of a checkpoint folder, validated."""
    p = _resolve(directory) / META
    if not p.is_file():
        raise CheckpointError(f"not a SpineSSL checkpoint ({META} missing)", directory)
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"unreadable JSON ({e.msg if hasattr(e, 'msg') else e})", p)
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise CheckpointError(f"unknown checkpoint schema {meta.get('schema') if isinstance(meta, dict) else None!r}", p)
    return meta


def _verify(d: Path, meta: dict, name: str) -> None:
    want = meta.get("files", {}).get(name)
    if want is None:
        raise CheckpointError(f"{name} is not part of this checkpoint", d)
    if not (d / name).is_file():
        raise CheckpointError("file missing", d / name)
    if _sha256(d / name) != want:
        raise CheckpointError("contents do not match checkpoint.json (truncated or replaced)", d / name)


def load_weights(directory, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, meta)`` of a checkpoint, verified against its recorded hash."""
    d = _resolve(directory)
    meta = read_meta(d)
    _verify(d, meta, WEIGHTS)
    return _load_tensors(d / WEIGHTS, device), meta


def load_checkpoint(directory, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None,
                    *, restore_rng_state: bool = False, strict: bool = True, device: str = "cpu") -> dict:
    """Load a checkpoint into ``model`` (and ``optimizer``; RNG when asked).  Returns the metadata
    dict with ``train_state`` added when the checkpoint has training state."""
    d = _resolve(directory)
    state, meta = load_weights(d, device)
    if model is not None:
        target = model
        while hasattr(target, "module") and isinstance(target.module, nn.Module):
            target = target.module
        target = getattr(target, "_orig_mod", target)
        own = target.state_dict()
        bad = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
        if bad:
            raise CheckpointError(f"weight {bad[0]} has shape {tuple(state[bad[0]].shape)}, the model expects "
                                  f"{tuple(own[bad[0]].shape)} (made for another preset or input size)", d / WEIGHTS)
        res = target.load_state_dict(state, strict=False)
        if strict and (res.missing_keys or res.unexpected_keys):
            what = res.missing_keys[:3] or res.unexpected_keys[:3]
            raise CheckpointError(f"weights do not fit this model ({'missing' if res.missing_keys else 'unexpected'}: "
                                  f"{', '.join(what)})", d / WEIGHTS)
    if (optimizer is not None or restore_rng_state) and TRAIN_J in meta.get("files", {}):
        _verify(d, meta, TRAIN_T)
        _verify(d, meta, TRAIN_J)
        tensors = _load_tensors(d / TRAIN_T)
        js = json.loads((d / TRAIN_J).read_text(encoding="utf-8"))
        meta["train_state"] = js.get("train_state", {})
        if optimizer is not None:
            if "optimizer" not in js:
                raise CheckpointError("no optimizer state in checkpoint", d)
            dev = next((p.device for g in optimizer.param_groups for p in g["params"]), torch.device("cpu"))
            try:
                optimizer.load_state_dict(_unflatten_optimizer(tensors, js["optimizer"], dev))
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"optimizer state does not fit ({e})", d / TRAIN_J)
        if restore_rng_state and "rng" in js:
            restore_rng(tensors, js["rng"])
    elif optimizer is not None or restore_rng_state:
        raise CheckpointError("checkpoint has no training state (cannot resume)", d)
    return meta


def check_model_config(directory, model_config: dict) -> None:
    """Before resuming: raise ``CheckpointError`` (naming its ``checkpoint.json``) when the
    checkpoint in ``directory`` was made for another network configuration (preset or sizes)
    than ``model_config`` (a ``ModelConfig.to_dict()``).  No checkpoint there: nothing to check."""
    d = Path(directory)
    if not exists(d):
        return
    saved = (read_meta(d).get("config") or {}).get("model")
    want = json.loads(json.dumps(model_config))
    if isinstance(saved, dict) and saved != want:
        diff = [f"{k} {saved.get(k)!r} vs {want.get(k)!r}" for k in sorted(set(saved) | set(want))
                if saved.get(k) != want.get(k)]
        raise CheckpointError(f"made for another model configuration ({'; '.join(diff[:4])}, checkpoint vs "
                              "this run); resume with the options it was trained with", d / META)


def resolve(path, what: str = "SpineSSL") -> Path:
    """The checkpoint folder ``path`` names: the folder itself, or a training output folder's
    ``best/`` (preferred) or ``last/``.  ``what`` names the kind of model in the error."""
    p = Path(path)
    if exists(p):
        return p
    for sub in ("best", "last"):
        if exists(p / sub):
            return p / sub
    raise CheckpointError(f"not a {what} checkpoint folder (no {META} here or in best/, last/)", p)


def model_config(directory) -> dict:
    """The model configuration (a ``ModelConfig`` dict) a checkpoint was made with."""
    d = resolve(directory)
    cfg = (read_meta(d).get("config") or {}).get("model")
    if not isinstance(cfg, dict):
        raise CheckpointError("checkpoint has no model config", d)
    return cfg


def exists(directory) -> bool:
    return (_resolve(directory) / META).is_file()


def remove(directory) -> None:
    for d in (Path(directory), _old(Path(directory))):
        for name in (META, WEIGHTS, TRAIN_T, TRAIN_J):
            if (d / name).exists():
                os.unlink(d / name)
