"""The shared, task-agnostic training loop (pretraining and grading both use it).

``fit(model, loss_fn, train_loader, val_loader, config, out_dir, checkpoint_config=...)``:

- Optimiser ``sgd`` (momentum, weight decay: the paper's) or ``adamw``; gradient clipping.
- Schedule ``cosine`` (linear warm-up over ``warmup_epochs``, then cosine decay to
  ``min_lr_fraction`` x lr at ``max_epochs``; computed from the step count, so a resumed run
  continues exactly) or ``plateau`` (the paper's: the learning rate is divided by 10
  (``lr_factor``) when the validation loss has not improved for ``patience`` epochs; after
  ``max_lr_drops`` reductions the next plateau stops training; ``max_epochs`` caps it).  Either way
  ``best/`` holds the epoch with the lowest validation loss.
- Diagnostics in ``log.csv``: per layer, the activation standard deviation and the gradient norm
  on the epoch's first batch (``act_<layer>``, ``grad_<layer>``); ``chance`` values (a metric
  name -> its value at chance, e.g. ln 7 for the level loss) make ``fit`` print a "not learning"
  warning when that training metric is still within 2 % of chance after ``stall_steps`` steps.
- Device: CUDA when present (``device="auto"``), with bf16 autocast (fp16 + GradScaler where bf16
  is unsupported) and channels-last memory format; CPU in fp32 otherwise.
- Multi-GPU / multi-node: launch the same command with ``torchrun``; ``fit`` sees ``WORLD_SIZE``,
  initialises the process group, wraps the model in DistributedDataParallel and averages the
  logged metrics over ranks; only rank 0 writes logs and checkpoints.  Loaders must give each
  rank its share (``make_loader`` does it with a DistributedSampler; ``data.PairSampler`` splits
  its pairs by rank itself).
- ``out_dir/log.csv`` (one row per epoch), ``out_dir/last/`` (full state for ``resume=True``,
  written every epoch), ``out_dir/best/`` (weights of the best validation epoch), optional
  TensorBoard events in ``out_dir/tensorboard``.

``loss_fn(model, batch, train: bool) -> (loss, {name: float-or-tensor})`` does the task's forward
pass on a batch already moved to the device; ``augment(batch) -> batch`` (training only) runs
on the device too, so augmentation happens on the GPU when training on the GPU.  ``set_epoch``
is called on the loaders' samplers / batch samplers each epoch when they have it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import checkpoint as ckpt
from .atomic import write_csv, write_json
from .device import amp_dtype as _amp_dtype
from .diagnostics import ActivationProbe, grad_norms
from .distributed import DistInfo, dist_info, make_loader, set_epoch, setup_distributed, to_device  # noqa: F401
from .device import select_device
from .errors import CheckpointError, ConfigError
from .progress import Progress


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "plateau")


@dataclass
class TrainConfig:
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    """SGD momentum; AdamW's beta1."""
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    min_lr_fraction: float = 0.01
    batch_size: int = 32
    max_epochs: int = 500
    min_epochs: int = 0
    patience: int = 10
    """Epochs without a validation-loss improvement before the learning rate is lowered."""
    lr_factor: float = 0.1
    max_lr_drops: int = 2
    """Reductions allowed; the plateau after the last one stops training."""
    min_delta: float = 1e-4
    """Relative improvement of the validation loss that counts as progress."""
    amp: str = "auto"
    """auto (bf16 on CUDA, fp16 where bf16 is unsupported, off on CPU) | bf16 | fp16 | off"""
    channels_last: bool = False
    """Channels-last (NDHWC) memory format on CUDA (ignored on CPU).  Off by default: measured on an
    H200 (torch 2.11, cuDNN, bf16) the paper-preset Siamese step took 0.256 s channels-last vs
    0.137 s contiguous — cuDNN falls back to a generic implicit-GEMM kernel for these 3D convs in
    NDHWC (benchmarks/gpu_variants.py, docs/performance.md)."""
    device: str = "auto"
    num_workers: int = 2
    seed: int = 0
    grad_clip: float = 5.0
    """Clip the gradient's global norm to this (0 = off)."""
    tensorboard: bool = False
    checkpoint_every: int = 1
    stall_steps: int = 300
    """After this many training steps, warn when a metric with a chance value is still at chance."""

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_epochs < 0 or not (0 <= self.min_lr_fraction <= 1) or self.grad_clip < 0:
            raise ConfigError("warmup_epochs and grad_clip must be >= 0, min_lr_fraction in [0, 1]")
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1:
            raise ConfigError("lr, batch_size and max_epochs must be positive")
        if not (0 < self.lr_factor < 1):
            raise ConfigError(f"lr_factor must be in (0, 1), got {self.lr_factor}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        if self.patience < 1 or self.max_lr_drops < 0:
            raise ConfigError("patience must be >= 1 and max_lr_drops >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        from .config import from_dict

        return from_dict(cls, d, "training")


# --------------------------------------------------------------------------- device

def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this config on this device (None = full fp32)."""
    return _amp_dtype(config.amp, device)


# --------------------------------------------------------------------------- plateau schedule

@dataclass
class Plateau:
    """Learning-rate schedule state (JSON-serialisable, saved in checkpoints)."""

    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    drops: int = 0
    stop: bool = False

    def step(self, value: float, epoch: int, cfg: TrainConfig) -> tuple[bool, bool]:
        """Record an epoch's validation loss; returns (improved, lower_lr_now)."""
        improved = value < self.best - cfg.min_delta * abs(self.best) if math.isfinite(self.best) else math.isfinite(value)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True, False
        self.bad_epochs += 1
        if cfg.schedule != "plateau" or self.bad_epochs < cfg.patience or epoch + 1 < cfg.min_epochs:
            return False, False
        if self.drops < cfg.max_lr_drops:
            self.drops += 1
            self.bad_epochs = 0
            return False, True
        self.stop = True
        return False, False


# --------------------------------------------------------------------------- the loop

def _mean(sums: dict, counts: dict, info: DistInfo, device) -> dict:
    keys = sorted(sums)
    if info.enabled:
        import torch.distributed as dist

        t = torch.tensor([sums[k] for k in keys] + [counts[k] for k in keys], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        vals = t.tolist()
        sums = dict(zip(keys, vals[:len(keys)]))
        counts = dict(zip(keys, vals[len(keys):]))
    return {k: sums[k] / counts[k] for k in keys if counts[k] > 0}


def run_epoch(model, loss_fn, loader, device, *, train: bool, optimizer=None, scaler=None,
              dtype=None, channels_last=False, augment=None, grad_clip=0.0, desc="", info=None,
              set_lr: Callable | None = None, diagnose: bool = False) -> dict:
    """One pass over ``loader``; returns batch-averaged metrics (``loss`` plus the loss_fn's).
    ``set_lr(i)`` is called before training step ``i`` of the epoch (the schedule); with
    ``diagnose`` the first batch's per-layer activation s.d. and gradient norms are added."""
    info = info or dist_info()
    model.train(train)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    diag: dict[str, float] = {}
    total = len(loader) if hasattr(loader, "__len__") else None
    with Progress(total if info.is_main else None, desc, unit="batch") as bar:
        for i, batch in enumerate(loader):
            batch = to_device(batch, device, channels_last)
            if train and augment is not None:
                with torch.no_grad():
                    batch = augment(batch)
            amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
            probe = ActivationProbe(model) if diagnose and i == 0 else None
            try:
                with torch.set_grad_enabled(train), amp:
                    loss, metrics = loss_fn(model, batch, train)
            finally:
                if probe is not None:
                    diag.update(probe.close())
            if train:
                if set_lr is not None:
                    set_lr(i)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if probe is not None:
                    diag.update(grad_norms(model))
                if grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            vals = {"loss": loss.detach()}
            vals.update(metrics or {})
            for k, v in vals.items():
                v = float(v.detach().float().item()) if torch.is_tensor(v) else float(v)
                if math.isfinite(v):
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0.0) + 1
            if info.is_main:
                bar.update(1)
                bar.set_postfix(loss=f"{sums.get('loss', 0) / max(counts.get('loss', 1), 1):.4g}")
    if not math.isfinite(sums.get("loss", 0.0)) or ("loss" not in counts and total):
        raise FloatingPointError("training loss is not finite (lower the learning rate?)")
    out = _mean(sums, counts, info, device)
    out.update({k: round(v, 6) for k, v in diag.items()})
    return out


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or AdamW over the trainable parameters; no weight decay on
    biases and normalisation parameters for AdamW (as is usual)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    decay = [p for p in params if p.dim() > 1]
    other = [p for p in params if p.dim() <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=config.lr,
                             betas=(config.momentum, 0.999))


def cosine_lr(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Learning rate at ``step``: linear warm-up, then cosine decay to ``min_lr_fraction`` x lr."""
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warm:
        return config.lr * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total_steps - warm))
    lo = config.lr * config.min_lr_fraction
    return lo + (config.lr - lo) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class FitResult:
    epochs_run: int
    last_epoch: int
    best_epoch: int
    best_val_loss: float
    stop_reason: str
    history: list


def fit(model: nn.Module, loss_fn: Callable, train_loader, val_loader, config: TrainConfig, out_dir,
        *, checkpoint_config: dict, resume: bool = False, augment: Callable | None = None,
        device: torch.device | None = None, on_epoch_end: Callable | None = None,
        chance: dict[str, float] | None = None) -> FitResult:
    """Train ``model`` (see the module docstring).  ``checkpoint_config`` (JSON) is stored in every
    checkpoint, e.g. ``{"task": "pretrain", "model": ModelConfig.to_dict(), "num_classes": 7,
    "in_hw": [224, 224]}``; ``on_epoch_end(epoch, row)`` may add entries to the log row;
    ``chance`` maps training metrics to their value at chance (the "not learning" warning)."""
    out = Path(out_dir)
    info = setup_distributed()
    device = device or select_device(config.device)
    dtype = amp_dtype(config, device)
    channels_last = config.channels_last and device.type == "cuda"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model.to(device)
    if channels_last:
        from .models import to_channels_last

        to_channels_last(model)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    plateau = Plateau()
    history: list[dict] = []
    start = 0
    last_dir, best_dir, log_path = out / "last", out / "best", out / "log.csv"
    if resume:
        if not ckpt.exists(last_dir):
            raise CheckpointError("nothing to resume (no checkpoint in last/)", out)
        meta = ckpt.load_checkpoint(last_dir, model, optimizer, restore_rng_state=True, device="cpu")
        st = meta.get("train_state", {})
        plateau = Plateau(**st.get("plateau", {}))
        start = int(meta["epoch"]) + 1
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        if log_path.is_file():
            with open(log_path, newline="") as f:
                history = [r for r in csv.DictReader(f) if int(r["epoch"]) < start]
        if info.is_main:
            print(f"resuming at epoch {start} (lr {optimizer.param_groups[0]['lr']:.3g})", flush=True)

    train_model = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if device.type == "cuda":  # batch statistics over all ranks' batches (CPU/gloo has no SyncBatchNorm)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    writer = None
    if config.tensorboard and info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the 'tensorboard' package (pip install tensorboard)")
        writer = SummaryWriter(str(out / "tensorboard"))

    steps_per_epoch = len(train_loader) if hasattr(train_loader, "__len__") else 1
    total_steps = max(1, config.max_epochs * steps_per_epoch)
    warnings_: list[str] = []

    def set_lr_for(epoch):
        if config.schedule != "cosine":
            return None

        def set_lr(i):
            lr_now = cosine_lr(config, epoch * steps_per_epoch + i, total_steps, steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr_now
        return set_lr

    stop_reason = "max_epochs"
    epoch = start - 1
    try:
        for epoch in range(start, config.max_epochs):
            if plateau.stop:
                stop_reason = "plateau"
                break
            t0 = time.time()
            set_epoch(train_loader, epoch)
            set_lr = set_lr_for(epoch)
            if set_lr is not None:
                set_lr(0)
            lr = optimizer.param_groups[0]["lr"]
            tr = run_epoch(train_model, loss_fn, train_loader, device, train=True, optimizer=optimizer,
                           scaler=scaler, dtype=dtype, channels_last=channels_last, augment=augment,
                           grad_clip=config.grad_clip, desc=f"epoch {epoch + 1}/{config.max_epochs}", info=info,
                           set_lr=set_lr, diagnose=True)
            if chance and not warnings_ and (epoch + 1) * steps_per_epoch >= config.stall_steps:
                for k, c in chance.items():
                    v = tr.get(k)
                    if v is not None and abs(v - c) <= 0.02 * abs(c):
                        warnings_.append(f"not learning: training {k} loss {v:.4f} is within 2 % of its chance value "
                                         f"{c:.4f} after {(epoch + 1) * steps_per_epoch} steps; check the learning "
                                         "rate, initialisation and normalisation (docs/pretraining.md)")
                        if info.is_main:
                            print(f"warning: {warnings_[-1]}", flush=True)
            if val_loader is not None:
                set_epoch(val_loader, 0)
                va = run_epoch(train_model, loss_fn, val_loader, device, train=False, dtype=dtype,
                               channels_last=channels_last, desc="validation", info=info)
            else:
                va = {}
            monitor = va.get("loss", tr["loss"])
            improved, drop = plateau.step(monitor, epoch, config)
            if drop:
                for g in optimizer.param_groups:
                    g["lr"] *= config.lr_factor
            row = {"epoch": epoch, "lr": lr, "time_s": round(time.time() - t0, 3)}
            row.update({f"train_{k}": v for k, v in tr.items()})
            row.update({f"val_{k}": v for k, v in va.items()})
            if on_epoch_end is not None:
                row.update(on_epoch_end(epoch, row) or {})
            history.append(row)
            if info.is_main:
                write_csv(log_path, history, _fieldnames(history))
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            writer.add_scalar(k, float(v), epoch)
                    writer.flush()
                metrics = {k: v for k, v in row.items() if k != "epoch"}
                if improved:
                    ckpt.save_checkpoint(best_dir, model, checkpoint_config, epoch=epoch, metrics=metrics)
                if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.max_epochs or plateau.stop:
                    st = {"plateau": dataclasses.asdict(plateau), "train_config": config.to_dict()}
                    if scaler is not None:
                        st["scaler"] = scaler.state_dict()
                    ckpt.save_checkpoint(last_dir, model, checkpoint_config, epoch=epoch, metrics=metrics,
                                         optimizer=optimizer, train_state=st, rng=True)
            if plateau.stop:
                stop_reason = "plateau"
                break
    finally:
        if writer is not None:
            writer.close()
    if info.is_main:
        write_json(out / "fit.json", {"stop_reason": stop_reason, "last_epoch": epoch,
                                      "best_epoch": plateau.best_epoch, "best_val_loss": plateau.best,
                                      "lr_drops": plateau.drops, "train_config": config.to_dict(),
                                      "device": str(device), "amp": str(dtype).replace("torch.", "") if dtype else "off",
                                      "world_size": info.world, "warnings": warnings_})
    return FitResult(epochs_run=epoch + 1 - start, last_epoch=epoch, best_epoch=plateau.best_epoch,
                     best_val_loss=plateau.best, stop_reason=stop_reason, history=history)


def _fieldnames(history: list[dict]) -> list[str]:
    names: list[str] = []
    for r in history:
        for k in r:
            if k not in names:
                names.append(k)
    return names
