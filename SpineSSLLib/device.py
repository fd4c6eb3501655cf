"""The compute device: one ``select_device`` for every stage (extraction, training, grading,
detection) and the mixed-precision dtype a training config gets on it."""

from __future__ import annotations

import os

import torch

from .errors import ConfigError


def _local_rank() -> int | None:
    """This process's GPU under ``torchrun`` (None when not launched so)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when present (under torchrun this process's local-rank GPU), else the CPU;
    otherwise a torch device string (``cpu``, ``cuda``, ``cuda:1``), checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            rank = _local_rank()
            return torch.device("cuda", rank if rank is not None else torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available")
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an ``amp`` setting (auto | bf16 | fp16 | off) on ``device``; None =
    full fp32 (always on the CPU)."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
