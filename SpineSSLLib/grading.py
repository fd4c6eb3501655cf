"""Disc-degeneration grading (the paper's §3.1, §4.2, Fig. 7): the grading table and its splits,
the classification CNN with transferred convolutional weights, and inference with test-time
augmentation (TTA) in the style of SpineNet V1.

The network is the pretraining trunk (``models.VGGMNet``) on IVD volumes (9×112×224) with new,
randomly initialised fully-connected layers and ``num_classes`` taken from the data.  Transfer
modes (one flag):

``scratch``        everything random, everything trained;
``frozen-random``  random conv weights, frozen; only the fc layers train (the paper's baseline);
``ssl-frozen``     conv weights from a pretraining checkpoint, frozen (the paper's main mode);
``ssl-finetune``   conv weights from a pretraining checkpoint, trained too;
``supervised``     conv weights from a network trained *with labels* on a different, fully
                   annotated cohort (the paper's upper bound), frozen.

Torch is imported lazily so that ``import SpineSSLLib.grading`` stays cheap for the CLI.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import ConfigError, ManifestError

MODES = ("scratch", "frozen-random", "ssl-frozen", "ssl-finetune", "supervised")
FROZEN_MODES = ("frozen-random", "ssl-frozen", "supervised")
PRETRAINED_MODES = ("ssl-frozen", "ssl-finetune", "supervised")

# The paper's grading split: 920 graded subjects -> 670 train / 50 validation / 200 test.
PAPER_SPLIT = (670, 50, 200)
# The paper's learning-curve sizes (subjects in the training set), nested subsets of the 670.
PAPER_TRAIN_SIZES = (240, 361, 670)

IVD_SHAPE = (9, 112, 224)


# --------------------------------------------------------------------------------------------
# The grading table: graded IVD volumes from volumes.csv
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IVDRecord:
    """One disc volume of one scan (a row of volumes.csv with kind IVD)."""

    volume_id: str
    scan_key: str
    subject_key: str
    family: str
    level: str
    grade: str  # "" when ungraded
    file: str  # relative to the cohort folder
    index: int
    timepoint: int = 0


def read_ivd_table(cohort_dir: str | os.PathLike) -> list[IVDRecord]:
    """All IVD rows of ``<cohort_dir>/volumes.csv`` (graded or not)."""
    path = Path(cohort_dir) / "volumes.csv"
    if not path.is_file():
        raise ManifestError("no volumes.csv (run `spine-ssl extract` first)", path)
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        need = {"volume_id", "scan_key", "subject_key", "level", "kind", "grade", "file", "index"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"missing columns {sorted(missing)}", path)
        for row in reader:
            if row["kind"].upper() != "IVD":
                continue
            try:
                idx = int(row["index"])
                tp = int(row.get("timepoint") or 0)
            except ValueError:
                raise ManifestError(f"bad index/timepoint in row {row['volume_id']!r}", path) from None
            g = (row.get("grade") or "").strip()
            if g.endswith(".0"):
                g = g[:-2]
            out.append(IVDRecord(row["volume_id"], row["scan_key"], row["subject_key"],
                                 (row.get("family") or "").strip() or row["subject_key"], row["level"], g,
                                 row["file"], idx, tp))
    return out


def class_names_from(records: Iterable[IVDRecord]) -> list[str]:
    """Grade classes present in the data, sorted numerically when they are numbers."""
    grades = {r.grade for r in records if r.grade}
    if not grades:
        raise ManifestError("no graded discs in the cohort")

    def key(g):
        try:
            return (0, float(g), g)
        except ValueError:
            return (1, 0.0, g)

    return sorted(grades, key=key)


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------

def read_pretrain_splits(path: str | os.PathLike) -> dict[str, str]:
    """Subject key -> pretraining split ("train"/"val"/"test"), from the pretraining splits file
    (``data.read_splits``: schema ``spinessl.splits/1``)."""
    from .data import read_splits

    return read_splits(path).split_of()


@dataclass
class GradingSplits:
    """Subjects of the grading experiment; ``train_order`` gives the nested-subset order."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"schema": "spinessl.grading.splits/1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "GradingSplits":
        return cls(list(d["train"]), list(d["val"]), list(d["test"]), int(d.get("seed", 0)), list(d.get("notes", [])))

    def split_of(self) -> dict[str, str]:
        return {s: k for k in ("train", "val", "test") for s in getattr(self, k)}


def scaled_counts(n: int, proportions: Sequence[int] = PAPER_SPLIT) -> tuple[int, int, int]:
    """Train/val/test counts for ``n`` subjects in the paper's 670/50/200 proportions
    (at least one subject in val and test when n >= 3)."""
    tot = sum(proportions)
    val = max(1, round(n * proportions[1] / tot)) if n >= 3 else 0
    test = max(1, round(n * proportions[2] / tot)) if n >= 3 else 0
    return n - val - test, val, test


def _perm(items: Sequence[str], seed: int, salt: str) -> list[str]:
    """Deterministic shuffle independent of the order ``items`` arrive in."""
    def k(x):
        return hashlib.sha256(f"{seed}:{salt}:{x}".encode()).hexdigest()

    return sorted(items, key=k)


def make_grading_splits(records: Sequence[IVDRecord], pretrain_split: dict[str, str] | None = None,
                        seed: int = 0, proportions: Sequence[int] = PAPER_SPLIT) -> GradingSplits:
    """Split graded subjects into train / validation / test, the paper's way.

    - only subjects with at least one graded disc take part;
    - families (twins) are kept in one split;
    - a test subject has a single scan and is not in the pretraining train or validation split
      (so the pretrained network has never seen it); a family goes to test only if all its
      graded members qualify;
    - sizes follow ``proportions`` (670/50/200 of 920) scaled to the cohort; when too few
      subjects qualify for test, test is smaller and a note says so.
    """
    pretrain_split = pretrain_split or {}
    scans: dict[str, set[str]] = defaultdict(set)
    graded: set[str] = set()
    family: dict[str, str] = {}
    for r in records:
        scans[r.subject_key].add(r.scan_key)
        family[r.subject_key] = r.family
        if r.grade:
            graded.add(r.subject_key)
    fam_members: dict[str, list[str]] = defaultdict(list)
    for s in sorted(graded):
        fam_members[family[s]].append(s)
    n = len(graded)
    n_train, n_val, n_test = scaled_counts(n, proportions)

    def eligible(f):
        return all(len(scans[s]) == 1 and pretrain_split.get(s) not in ("train", "val") for s in fam_members[f])

    fams = _perm(list(fam_members), seed, "grading")
    test, notes = [], []
    for f in fams:
        if len(test) >= n_test:
            break
        if eligible(f) and len(test) + len(fam_members[f]) <= n_test:
            test.extend(fam_members[f])
    if len(test) < n_test:
        notes.append(f"only {len(test)} of {n_test} wanted test subjects have a single scan and are "
                     "outside pretraining train/val")
    rest = [f for f in fams if not set(fam_members[f]) & set(test)]
    val = []
    for f in rest:
        if len(val) >= n_val:
            break
        if len(val) + len(fam_members[f]) <= n_val:
            val.extend(fam_members[f])
    train = [s for f in rest for s in fam_members[f] if s not in val]
    return GradingSplits(train=train, val=val, test=test, seed=seed, notes=notes)


def nested_train_subsets(splits: GradingSplits, sizes: Sequence[int]) -> dict[int, list[str]]:
    """Nested training subsets (each the prefix of one fixed order of ``splits.train``)."""
    out = {}
    for s in sizes:
        if s < 1 or s > len(splits.train):
            raise ConfigError(f"training-set size {s} outside 1..{len(splits.train)}")
        out[int(s)] = list(splits.train[:s])
    return out


def scaled_train_sizes(n_train: int, paper_sizes: Sequence[int] = PAPER_TRAIN_SIZES) -> list[int]:
    """The paper's 240/361/670 training subjects scaled to ``n_train`` (distinct, ascending)."""
    top = paper_sizes[-1]
    out = sorted({max(2, min(n_train, round(n_train * s / top))) for s in paper_sizes})
    return out


# --------------------------------------------------------------------------------------------
# Loading volumes
# --------------------------------------------------------------------------------------------

def load_ivd_arrays(cohort_dir: str | os.PathLike, records: Sequence[IVDRecord]) -> np.ndarray:
    """Stack the IVD volumes of ``records`` into one float16 array (N, 9, 112, 224)."""
    cohort_dir = Path(cohort_dir)
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_file[r.file].append(i)
    out = np.zeros((len(records), *IVD_SHAPE), dtype=np.float16)
    for fname, idxs in by_file.items():
        path = cohort_dir / fname
        try:
            with np.load(path, allow_pickle=False) as z:
                ivd = z["ivd"]
        except FileNotFoundError:
            raise ManifestError("volume file listed in volumes.csv is missing", path) from None
        except (OSError, KeyError, ValueError) as e:
            raise ManifestError(f"unreadable volume file ({type(e).__name__})", path) from None
        if ivd.ndim != 4 or tuple(ivd.shape[1:]) != IVD_SHAPE:
            raise ManifestError(f"ivd array has shape {ivd.shape}, expected (6, {IVD_SHAPE})", path)
        for i in idxs:
            j = records[i].index
            if not 0 <= j < ivd.shape[0]:
                raise ManifestError(f"index {j} outside the ivd array", path)
            out[i] = ivd[j]
    return out


# --------------------------------------------------------------------------------------------
# Test-time augmentation (SpineNet V1 style)
# --------------------------------------------------------------------------------------------

@dataclass
class TTAConfig:
    """Views averaged at inference: in-plane shifts (rows, columns in pixels), neighbouring
    9-slice windows (slice offsets) and the slice-order flip.  ``TTAConfig.none()`` = one view."""

    shifts: tuple[tuple[int, int], ...] = ((0, 0), (-16, 0), (16, 0), (0, -16), (0, 16))
    slice_offsets: tuple[int, ...] = (-1, 0, 1)
    flip: bool = True

    @classmethod
    def none(cls) -> "TTAConfig":
        return cls(shifts=((0, 0),), slice_offsets=(0,), flip=False)

    @property
    def n_views(self) -> int:
        return len(self.shifts) * len(self.slice_offsets) * (2 if self.flip else 1)


def shift_zero(x, offsets: Sequence[int], dims: Sequence[int]):
    """Translate tensor ``x`` by integer ``offsets`` along ``dims``, filling with zeros (as the
    extraction pads missing slices and the training augmentation pads shifted borders)."""
    import torch

    out = x
    for off, d in zip(offsets, dims):
        off = int(off)
        if off == 0:
            continue
        n = out.shape[d]
        z = torch.zeros_like(out.narrow(d, 0, min(abs(off), n)))
        if abs(off) >= n:
            out = torch.zeros_like(out)
        elif off > 0:
            out = torch.cat([z, out.narrow(d, 0, n - off)], dim=d)
        else:
            out = torch.cat([out.narrow(d, -off, n + off), z], dim=d)
    return out


def tta_views(x, cfg: TTAConfig):
    """Yield the augmented views of a batch ``x`` of shape (N, 9, H, W) (slices first)."""
    import torch

    for dz in cfg.slice_offsets:
        for dy, dx in cfg.shifts:
            v = shift_zero(x, (dz, dy, dx), (1, 2, 3))
            yield v
            if cfg.flip:
                yield torch.flip(v, dims=(1,))


# --------------------------------------------------------------------------------------------
# The grading model and its transfer modes
# --------------------------------------------------------------------------------------------

IVD_HW = (112, 224)


def pretrained_model_config(checkpoint_dir: str | os.PathLike):
    """The ``ModelConfig`` a pretraining (or grading) checkpoint was made with."""
    from . import checkpoint as ckpt
    from .errors import CheckpointError
    from .models import ModelConfig

    meta = ckpt.read_meta(checkpoint_dir)
    cfg = (meta.get("config") or {}).get("model")
    if not isinstance(cfg, dict):
        raise CheckpointError("checkpoint has no model config", checkpoint_dir)
    return ModelConfig.from_dict(cfg)


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or a training output folder holding ``best/`` (preferred) or ``last/``."""
    from . import checkpoint as ckpt
    from .errors import CheckpointError

    p = Path(path)
    if ckpt.exists(p):
        return p
    for sub in ("best", "last"):
        if ckpt.exists(p / sub):
            return p / sub
    raise CheckpointError("not a SpineSSL checkpoint folder (no checkpoint.json here or in best/, last/)", p)


def build_grading_model(model_config, num_classes: int, mode: str, pretrained: str | os.PathLike | None = None,
                        seed: int = 0):
    """The classification CNN of the paper's Fig. 7 for ``mode`` (see the module docstring).

    The fully-connected layers (fc6..fc8) are always new and random (seeded by ``seed``); for the
    pretrained modes the conv trunk is copied from ``pretrained``; for the frozen modes the trunk
    parameters get ``requires_grad=False`` so the optimiser never changes them.
    """
    import torch

    from . import checkpoint as ckpt
    from .models import VGGMNet, load_trunk

    if mode not in MODES:
        raise ConfigError(f"unknown grading mode {mode!r} (choose from {', '.join(MODES)})")
    if mode in PRETRAINED_MODES and pretrained is None:
        raise ConfigError(f"mode {mode} needs a pretrained checkpoint (--pretrained)")
    if mode not in PRETRAINED_MODES and pretrained is not None:
        raise ConfigError(f"mode {mode} starts from random weights; do not pass --pretrained")
    if pretrained is not None:
        pretrained = resolve_checkpoint_dir(pretrained)
        model_config = pretrained_model_config(pretrained)
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        model = VGGMNet(model_config, num_classes, IVD_HW)
    if pretrained is not None:
        state, _ = ckpt.load_weights(pretrained)
        load_trunk(model, state)
    if mode in FROZEN_MODES:
        for p in model.trunk.parameters():
            p.requires_grad_(False)
    return model


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class-balanced weights (inverse frequency, mean 1 over the classes present); a class
    absent from training gets weight 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max(1, (counts > 0).sum()), 0.0)
    return w


@dataclass
class GradeTrainConfig:
    """Everything ``train_grading`` needs besides the data."""

    mode: str = "ssl-frozen"
    model_preset: str = "paper"
    """Used for scratch / frozen-random; the pretrained modes take the checkpoint's config."""
    model_overrides: dict = field(default_factory=dict)
    """ModelConfig fields overriding the preset (scratch / frozen-random only), e.g. {"width": 0.125}."""
    pretrained: str | None = None
    seed: int = 0
    augment: bool = True
    class_balanced: bool = True
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 2000
    patience: int = 10
    max_lr_drops: int = 2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    device: str = "auto"
    amp: str = "auto"
    num_workers: int = 0
    fc_init: str = "data"
    """"data": for the frozen-trunk modes, set the new fc6/fc7/fc8 weights and biases so each
    unit's pre-activation has mean 0 and s.d. 1 on a batch of training discs (data-dependent init of
    the new layers only; the trunk is untouched); trainable-trunk modes keep the model's He init
    (measured on the 64-subject reproduce cohort: with this init a trainable trunk's loss started at
    ~58 (scratch) or went to NaN (ssl-finetune) at lr 1e-3); "he": the model's own initialisation
    always."""

    def __post_init__(self):
        if self.fc_init not in ("data", "he"):
            raise ConfigError(f"fc_init must be 'data' or 'he', got {self.fc_init!r}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown grading mode {self.mode!r} (choose from {', '.join(MODES)})")

    def train_config(self):
        from .train import TrainConfig

        return TrainConfig(lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
                           max_lr_drops=self.max_lr_drops, amp=self.amp, device=self.device,
                           num_workers=self.num_workers, seed=self.seed)

    def to_dict(self) -> dict:
        return asdict(self)


class IVDDataset:
    """In-memory (volume, label) pairs: volumes float16 (N, 9, 112, 224), labels int64 (N,).

    Items are ``(x, y)`` with ``x`` float32 ``(1, 9, H, W)``."""

    def __init__(self, volumes: np.ndarray, labels: np.ndarray):
        import torch

        self.x = torch.from_numpy(np.ascontiguousarray(volumes))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i):
        return self.x[i].float().unsqueeze(0), self.y[i]


def data_dependent_fc_init(model, volumes: np.ndarray, n: int = 64, seed: int = 0) -> dict:
    """Data-dependent initialisation of the new fully-connected layers fc6, fc7 and fc8
    (Krähenbühl et al. 2016): on up to ``n`` training volumes, each unit's weights and bias are set
    so its pre-activation has mean 0 and standard deviation 1.  Only those layers change; conv
    weights (transferred or frozen) are untouched.  Returns the median scale factor per layer.

    Centring matters as much as scaling: a pretrained trunk's pool5 features can share a large
    common offset with a small spread across discs (measured: spread 1e-3 of the offset); scaling
    the spread to 1 without removing the offset made the logits ~1e3 and the loss explode.

    Why: the random-init trunk's pool5 activations are ~1e-2 in size, so with the usual fc init
    the logits start ~1e-4 apart and SGD needs thousands of steps before the fc layers move —
    frozen-trunk modes then sit at chance in any short schedule although a linear probe on the
    same features is far above it."""
    import torch

    rng = np.random.default_rng(seed)
    idx = rng.choice(len(volumes), size=min(n, len(volumes)), replace=False)
    x = torch.as_tensor(np.asarray(volumes[np.sort(idx)], dtype=np.float32)).unsqueeze(1)
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scales = {}
    with torch.no_grad():
        h = model.trunk(model.prepare_input(x.to(dev))).flatten(1)
        for name in ("fc6", "fc7", "fc8"):
            layer = getattr(model, name)
            pre = layer(h)
            mu, sd = pre.mean(0), pre.std(0)
            ok = torch.isfinite(sd) & (sd > 1e-12)
            sd = torch.where(ok, sd, torch.ones_like(sd))
            mu = torch.where(ok, mu, torch.zeros_like(mu))
            layer.weight.div_(sd[:, None])
            layer.bias.sub_(mu).div_(sd)
            scales[name] = float((1.0 / sd).median())
            h = layer(h)
            if name == "fc6":  # fc7 (the embedding) is linear and fc8 reads it directly
                h = torch.relu(h)
    model.train(was_training)
    return scales


def _loss_fn(weights):
    import torch
    import torch.nn.functional as F

    def loss_fn(model, batch, train):
        x, y = batch
        _, logits = model(x)
        w = weights.to(logits.device) if weights is not None else None
        loss = F.cross_entropy(logits.float(), y, weight=w)
        acc = (logits.argmax(1) == y).float().mean()
        return loss, {"acc": acc}

    return loss_fn


def _augmenter(enabled: bool, net_hw: tuple[int, int]):
    """The classification augmentation: the pretraining augmentations (``data.AugmentConfig``;
    rotation, translation, scaling from ``data.PairAugment.matrices``, intensity, slice-order
    flip) with every draw made per disc volume, the flip included (no pair coupling).
    Translations are given in full-size pixels; for discs the full size is 112x224."""
    if not enabled:
        return None
    import torch
    from monai.networks.layers import AffineTransform

    from .data import AugmentConfig, PairAugment

    cfg = AugmentConfig()
    geo = PairAugment(cfg, net_hw)
    geo.px = (net_hw[1] / IVD_HW[1], net_hw[0] / IVD_HW[0])  # (columns, rows) relative to 112x224
    tf = AffineTransform(normalized=False, mode="bilinear", padding_mode="zeros", zero_centered=True)

    def augment(batch):
        x, y = batch
        n = x.shape[0]
        u = torch.rand(n, 6, dtype=torch.float64)  # global CPU RNG: saved in checkpoints, exact resume
        flip = (torch.rand(n) < 0.5) if cfg.flip else torch.zeros(n, dtype=torch.bool)
        xf = x.float().contiguous()
        theta = torch.as_tensor(geo.matrices(u[:, :5].numpy()), dtype=torch.float32, device=x.device)
        out = tf(xf, theta)
        gain = (1 + (2 * u[:, 5] - 1) * cfg.intensity).to(device=x.device, dtype=torch.float32)
        out = out * gain.view(-1, 1, 1, 1, 1)
        out = torch.where(flip.to(x.device).view(-1, 1, 1, 1, 1), torch.flip(out, dims=(2,)), out)
        return out.to(x.dtype), y

    return augment


def downscale(volumes: np.ndarray, net_hw: tuple[int, int], batch: int = 64) -> np.ndarray:
    """Area-downscale (N, 9, 112, 224) volumes to the network's working size exactly as
    ``VGGMNet.prepare_input`` does, so caches hold what the convolutions see (float16)."""
    import torch
    import torch.nn.functional as F

    if tuple(volumes.shape[-2:]) == tuple(net_hw):
        return volumes
    out = np.empty((volumes.shape[0], volumes.shape[1], *net_hw), dtype=np.float16)
    for i in range(0, volumes.shape[0], batch):
        x = torch.from_numpy(volumes[i:i + batch].astype(np.float32)).unsqueeze(1)
        out[i:i + batch] = F.adaptive_avg_pool3d(x, (volumes.shape[1], *net_hw)).squeeze(1).numpy()
    return out


def predict_proba(model, volumes, tta: TTAConfig | None = None, batch_size: int = 32, device=None) -> np.ndarray:
    """Class probabilities (N, C) for volumes (N, 9, H, W) (numpy or tensor), averaged over the
    TTA views (softmax of each view, then the mean).  Shifts are given in 112×224 pixels and
    scaled to the input's size."""
    import torch

    tta = tta or TTAConfig.none()
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    x_all = torch.as_tensor(volumes)
    scale = x_all.shape[-2] / IVD_HW[0]
    cfg = TTAConfig(shifts=tuple((round(a * scale), round(b * scale)) for a, b in tta.shifts),
                    slice_offsets=tta.slice_offsets, flip=tta.flip)
    out = []
    with torch.inference_mode():
        for i in range(0, x_all.shape[0], batch_size):
            x = x_all[i:i + batch_size].to(device=device, dtype=torch.float32)
            acc = None
            for v in tta_views(x, cfg):
                p = torch.softmax(model(v.unsqueeze(1))[1].float(), dim=1)
                acc = p if acc is None else acc + p
            out.append((acc / cfg.n_views).cpu().numpy())
    n_cls = getattr(model, "num_classes", 0)
    return np.concatenate(out) if out else np.zeros((0, n_cls), dtype=np.float32)


def _subset(records: Sequence[IVDRecord], subjects: Iterable[str]) -> list[IVDRecord]:
    keep = set(subjects)
    return [r for r in records if r.subject_key in keep and r.grade]


def train_grading(cohort_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: GradeTrainConfig, *,
                  splits: GradingSplits | None = None, train_subjects: Sequence[str] | None = None,
                  pretrain_splits: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                  resume: bool = False, eval_tta: TTAConfig | None = None, data_cache: dict | None = None) -> dict:
    """Train a grading model on a cohort's graded IVD volumes and evaluate it on the test split.

    Writes to ``out_dir``: ``splits.json``, the training loop's ``log.csv`` / ``last/`` /
    ``best/`` (the grading model), ``test_metrics.json``, ``test_predictions.csv`` and
    ``confusion.png``.  Returns the test metrics dict.  ``train_subjects`` restricts training to
    a subset of ``splits.train`` (the learning-curve experiment); ``data_cache`` (a dict the
    caller keeps) lets repeated runs on one cohort share the loaded volumes.
    """
    import torch

    from . import checkpoint as ckpt
    from .atomic import write_csv, write_json
    from .metrics import classification_report, save_confusion_png
    from .models import ModelConfig
    from .train import dist_info, fit, make_loader, select_device

    out = Path(out_dir)
    records = read_ivd_table(cohort_dir)
    class_names = list(class_names) if class_names else class_names_from(records)
    cls_index = {c: i for i, c in enumerate(class_names)}
    if splits is None:
        pre = read_pretrain_splits(pretrain_splits) if pretrain_splits else {}
        splits = make_grading_splits(records, pre, seed=0)
    is_main = dist_info().is_main  # under torchrun only rank 0 writes
    if is_main:
        write_json(out / "splits.json", splits.to_dict())
    if train_subjects is None:
        train_subjects = splits.train
    elif not set(train_subjects) <= set(splits.train):
        raise ConfigError("training subjects must come from the training split")
    parts = {"train": _subset(records, train_subjects), "val": _subset(records, splits.val),
             "test": _subset(records, splits.test)}
    for name in ("train", "val"):
        if not parts[name]:
            raise ManifestError(f"no graded discs in the {name} split", Path(cohort_dir) / "volumes.csv")
    unknown = {r.grade for p in parts.values() for r in p} - set(cls_index)
    if unknown:
        raise ManifestError(f"grades {sorted(unknown)} not among the model's classes {class_names}")

    pretrained = resolve_checkpoint_dir(cfg.pretrained) if cfg.pretrained else None
    mcfg = (pretrained_model_config(pretrained) if pretrained
            else ModelConfig.preset(cfg.model_preset, **cfg.model_overrides))
    model = build_grading_model(mcfg, len(class_names), cfg.mode, pretrained, seed=cfg.seed)
    net_hw = tuple(model.net_hw)

    cache = data_cache if data_cache is not None else {}

    def arrays(recs):
        key = (str(Path(cohort_dir).resolve()), net_hw)
        store = cache.setdefault(key, {})
        missing = [r for r in recs if r.volume_id not in store]
        if missing:
            vols = downscale(load_ivd_arrays(cohort_dir, missing), net_hw)
            for r, v in zip(missing, vols):
                store[r.volume_id] = v
        if not recs:
            return np.zeros((0, IVD_SHAPE[0], *net_hw), np.float16)
        return np.stack([store[r.volume_id] for r in recs])

    labels = {k: np.array([cls_index[r.grade] for r in v], dtype=np.int64) for k, v in parts.items()}
    tcfg = cfg.train_config()
    device = select_device(tcfg.device)
    x_train = arrays(parts["train"])
    fc_scales = {}
    if cfg.fc_init == "data" and cfg.mode in FROZEN_MODES and not (resume and ckpt.exists(out / "last")):
        fc_scales = data_dependent_fc_init(model, x_train, seed=cfg.seed)
    ds_train = IVDDataset(x_train, labels["train"])
    ds_val = IVDDataset(arrays(parts["val"]), labels["val"])
    train_loader = make_loader(ds_train, tcfg.batch_size, shuffle=True, num_workers=tcfg.num_workers,
                               seed=cfg.seed, device=device)
    val_loader = make_loader(ds_val, tcfg.batch_size, shuffle=False, num_workers=tcfg.num_workers, device=device)
    w = torch.tensor(class_weights(labels["train"], len(class_names)), dtype=torch.float32) if cfg.class_balanced else None
    ck_config = {"task": "grade", "model": mcfg.to_dict(), "num_classes": len(class_names), "in_hw": list(IVD_HW),
                 "class_names": class_names, "mode": cfg.mode, "grade_config": cfg.to_dict(),
                 "pretrained": None if pretrained is None else _checkpoint_fingerprint(pretrained)}
    resume = resume and ckpt.exists(out / "last")
    res = fit(model, _loss_fn(w), train_loader, val_loader, tcfg, out, checkpoint_config=ck_config,
              resume=resume, augment=_augmenter(cfg.augment, net_hw), device=device)
    if not is_main:  # rank 0 evaluates and writes; other ranks are done
        return {"mode": cfg.mode, "seed": cfg.seed, "rank": dist_info().rank}
    best = out / "best" if ckpt.exists(out / "best") else out / "last"
    ckpt.load_checkpoint(best, model)
    model.to(device)

    result = {"mode": cfg.mode, "seed": cfg.seed, "class_names": class_names,
              "n_train_subjects": len(set(train_subjects)),
              "n_train_scans": len({r.scan_key for r in parts["train"]}),
              "n_train_discs": len(parts["train"]), "n_val_discs": len(parts["val"]),
              "n_test_subjects": len(splits.test), "n_test_discs": len(parts["test"]),
              "epochs": res.last_epoch + 1, "best_epoch": res.best_epoch, "stop_reason": res.stop_reason,
              "device": str(device), "fc_init_scales": fc_scales}
    if parts["test"]:
        x_test = arrays(parts["test"])
        prob = predict_proba(model, x_test, TTAConfig.none(), device=device)
        rep = classification_report(labels["test"], prob.argmax(1), class_names=class_names)
        result["test"] = rep.to_dict()
        if eval_tta is not None and eval_tta.n_views > 1:
            prob_tta = predict_proba(model, x_test, eval_tta, device=device)
            result["test_tta"] = classification_report(labels["test"], prob_tta.argmax(1),
                                                       class_names=class_names).to_dict()
        rows = [{"volume_id": r.volume_id, "scan_key": r.scan_key, "level": r.level, "grade": r.grade,
                 "predicted": class_names[int(k)], **{f"p_{c}": round(float(p[i]), 5) for i, c in enumerate(class_names)}}
                for r, k, p in zip(parts["test"], prob.argmax(1), prob)]
        write_csv(out / "test_predictions.csv", rows)
        save_confusion_png(out / "confusion.png", rep.confusion, class_names,
                           title=f"{cfg.mode}: average class accuracy {rep.average_class_accuracy:.3f} "
                                 f"(n={rep.n} discs)")
    write_json(out / "test_metrics.json", result)
    return result


def _checkpoint_fingerprint(d: Path) -> dict:
    """What a grading checkpoint records about its pretrained source (no absolute paths)."""
    from . import checkpoint as ckpt

    meta = ckpt.read_meta(d)
    return {"task": (meta.get("config") or {}).get("task"), "epoch": meta.get("epoch"),
            "weights_sha256": meta.get("files", {}).get("model.safetensors")}


# --------------------------------------------------------------------------------------------
# Inference for users: one scan -> per-disc grades
# --------------------------------------------------------------------------------------------

GRADES_SCHEMA = "spinessl.grades/1"


@dataclass
class GradingModel:
    """A loaded grading model: the network, its class names and where it came from."""

    model: object
    class_names: list[str]
    meta: dict

    @property
    def mode(self) -> str:
        return (self.meta.get("config") or {}).get("mode", "")


def load_grading_model(path: str | os.PathLike, device: str = "auto") -> GradingModel:
    """Load a grading checkpoint (a folder, or a ``grade-train`` output folder holding ``best/``)."""
    from . import checkpoint as ckpt
    from .errors import CheckpointError
    from .models import ModelConfig, VGGMNet
    from .train import select_device

    d = resolve_checkpoint_dir(path)
    meta = ckpt.read_meta(d)
    c = meta.get("config") or {}
    if c.get("task") != "grade" or not c.get("class_names"):
        raise CheckpointError(f"not a grading model (task {c.get('task')!r}); train one with `spine-ssl grade-train`", d)
    model = VGGMNet(ModelConfig.from_dict(c["model"]), int(c["num_classes"]), tuple(c.get("in_hw", IVD_HW)))
    ckpt.load_checkpoint(d, model)
    model.to(select_device(device)).eval()
    return GradingModel(model, list(c["class_names"]), meta)


def grade_volumes(gm: GradingModel, ivd: np.ndarray, present: np.ndarray, discs: Sequence[str],
                  affines: np.ndarray | None = None, tta: TTAConfig | None = None) -> dict:
    """Grade the present discs of one scan (``ivd`` (6, 9, 112, 224)); returns the grades document
    (schema ``spinessl.grades/1``): per disc level, present, grade, class probabilities and the
    disc centre in LPS mm when ``affines`` (volume voxel -> LPS) are given."""
    tta = tta or TTAConfig()
    present = np.asarray(present, dtype=bool)
    idx = np.flatnonzero(present)
    probs = predict_proba(gm.model, np.asarray(ivd, dtype=np.float32)[idx], tta) if idx.size else np.zeros((0, len(gm.class_names)))
    out = []
    row_of = {int(i): r for r, i in enumerate(idx)}
    for i, name in enumerate(discs):
        entry = {"level": str(name), "present": bool(present[i])}
        if present[i]:
            p = probs[row_of[i]]
            entry["grade"] = gm.class_names[int(np.argmax(p))]
            entry["probabilities"] = {c: round(float(v), 6) for c, v in zip(gm.class_names, p)}
        else:
            entry["grade"] = None
            entry["probabilities"] = None
        if affines is not None and present[i]:
            k, h, w = np.asarray(ivd).shape[1:]
            centre = np.asarray(affines[i]) @ np.array([(w - 1) / 2, (h - 1) / 2, (k - 1) / 2, 1.0])
            entry["centre_lps"] = [round(float(v), 3) for v in centre[:3]]
        out.append(entry)
    files = gm.meta.get("files", {})
    return {"schema": GRADES_SCHEMA,
            "model": {"mode": gm.mode, "class_names": gm.class_names,
                      "preset": (gm.meta.get("config") or {}).get("model", {}).get("preset"),
                      "weights_sha256": files.get("model.safetensors")},
            "tta": {"shifts": [list(s) for s in tta.shifts], "slice_offsets": list(tta.slice_offsets),
                    "flip": tta.flip, "n_views": tta.n_views},
            "discs": out}


def grades_csv_rows(doc: dict) -> list[dict]:
    """The grades document as CSV rows: level, present, grade, p_<class>..., centre (LPS mm)."""
    names = doc["model"]["class_names"]
    rows = []
    for d in doc["discs"]:
        r = {"level": d["level"], "present": int(d["present"]), "grade": d["grade"] or ""}
        for c in names:
            r[f"p_{c}"] = "" if not d["probabilities"] else d["probabilities"][c]
        c = d.get("centre_lps") or ["", "", ""]
        r.update(centre_l_mm=c[0], centre_p_mm=c[1], centre_s_mm=c[2])
        rows.append(r)
    return rows


def grade_scan(gm: GradingModel, scan, levels, tta: TTAConfig | None = None, extract_config=None) -> dict:
    """Extract the disc volumes of ``scan`` at ``levels`` (``extract.extract_scan``) and grade them."""
    from .extract import extract_scan

    sv = extract_scan(scan, levels, extract_config)
    doc = grade_volumes(gm, sv.ivd, sv.ivd_present, sv.discs, sv.ivd_affine, tta)
    doc["issues"] = list(sv.issues) + list(getattr(levels, "issues", []))
    return doc


# --------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------

def export_onnx(gm: GradingModel, path: str | os.PathLike, opset: int = 17) -> Path:
    """Export the grading network (input ``volumes`` (N, 1, 9, 112, 224) float32, output
    ``probabilities`` (N, C) softmax) to ONNX, atomically."""
    import torch

    from .atomic import atomic_path

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return torch.softmax(self.net(x)[1], dim=1)

    net = gm.model
    dev = next(net.parameters()).device
    w = Wrapped(net).to("cpu").eval()
    x = torch.zeros(1, 1, IVD_SHAPE[0], *net.in_hw)
    path = Path(path)
    import warnings

    with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about shape checks that are constant here
        torch.onnx.export(w, (x,), str(tmp), input_names=["volumes"], output_names=["probabilities"],
                          dynamic_axes={"volumes": {0: "n"}, "probabilities": {0: "n"}}, opset_version=opset,
                          dynamo=False)
    net.to(dev)
    return path


def onnx_predict(path: str | os.PathLike, volumes: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Probabilities from an exported model with ONNX Runtime (CPU)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    x = np.asarray(volumes, dtype=np.float32)
    if x.ndim == 4:
        x = x[:, None]
    return sess.run(["probabilities"], {"volumes": x})[0]
