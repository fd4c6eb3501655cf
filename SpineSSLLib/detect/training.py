"""Training the detector (``spine-ssl detect-train``) with the shared loop ``SpineSSLLib.train.fit``
(checkpoints, resume, CUDA/AMP, DDP, progress).

Two sources of samples, mixed: labelled scans (any level source; ``prepare``) and
domain-randomised synthetic scans (``randomised.cases``: a new random appearance for every
sample).  Samples are 2.5D slice stacks of the canonical grid placed on a fixed canvas at a
random offset (translation augmentation; a crop when the grid is larger); labelled scans get
random gamma, contrast, noise and intensity curves.  One "epoch" is ``samples_per_epoch`` random
samples; every sample is a pure function of (seed, sample index), so a resumed run sees the same
data it would have seen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, SpineSSLError
from ..progress import track
from .cases import Case
from .grid import SagittalGrid, make_grid, resample
from .model import DetectorConfig
from .targets import (BACKGROUND, CENTRE, CHANNELS, KNOWN, N_CLASSES, N_TARGETS, S1_CLASS, SACRUM, LevelGeometry,
                      level_geometry, slice_targets)


@dataclass
class DetectTrainConfig:
    """Data / augmentation / loss knobs of detector training (the loop's are ``TrainConfig``)."""

    canvas_px: int | tuple[int, int] = 128  # training canvas (rows, columns; canonical pixels)
    samples_per_epoch: int = 512
    val_samples: int = 96
    spine_slice_fraction: float = 0.85  # share of samples drawn from slices that show a level
    gamma: tuple[float, float] = (0.7, 1.4)
    contrast: tuple[float, float] = (0.8, 1.2)
    noise: float = 0.03
    pos_weight_centre: float = 10.0  # extra weight of positive pixels in the centre map
    vertebra_weight: float = 3.0  # weight of vertebra pixels in the class loss (background 1)
    anchor_weight: float = 5.0  # weight of S1 and sacrum pixels (the anchor of the level count)
    randomised_fraction: float = 1.0  # share of samples from randomised scans when both sources exist
    seed: int = 0

    def __post_init__(self):
        self.gamma, self.contrast = tuple(self.gamma), tuple(self.contrast)
        if isinstance(self.canvas_px, (list, tuple)):
            self.canvas_px = (int(self.canvas_px[0]), int(self.canvas_px[1]))
        if min(self.canvas) < 32 or self.samples_per_epoch < 1 or self.val_samples < 1:
            raise ConfigError("canvas_px >= 32, samples_per_epoch >= 1 and val_samples >= 1 required")
        if not 0.0 <= self.randomised_fraction <= 1.0:
            raise ConfigError("randomised_fraction must be in [0, 1]")

    @property
    def canvas(self) -> tuple[int, int]:
        c = self.canvas_px
        return (c, c) if isinstance(c, int) else tuple(c)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["gamma"], d["contrast"] = list(self.gamma), list(self.contrast)
        if isinstance(self.canvas_px, tuple):
            d["canvas_px"] = list(self.canvas_px)
        return d


@dataclass
class Prepared:
    """A case on the canonical grid, ready for sampling."""

    key: str
    image: np.ndarray  # (K, H, W)
    geom: list[LevelGeometry]
    grid: SagittalGrid
    spine_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def prepare(cases: list[Case], cfg: DetectorConfig, desc: str = "preparing") -> list[Prepared]:
    out = []
    for case in track(cases, desc=desc, unit="scan"):
        if case.levels is None or len(case.levels) == 0:
            raise SpineSSLError("no levels for this scan (cannot train on it)", case.ref.where)
        grid = make_grid(case.scan, cfg.spacing_mm, cfg.multiple, case.ref.where)
        image = resample(case.scan, grid, case.ref.where)
        geom = level_geometry(case.levels, grid)
        ks = sorted({k for g in geom for k in range(g.slice_range[0], g.slice_range[1] + 1)
                     if 0 <= k < image.shape[0]})
        out.append(Prepared(case.ref.key, image, geom, grid, np.array(ks, dtype=int)))
    return out


def to_canvas(x: np.ndarray, t: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Place (input, targets) on a canvas at a random offset (a crop where larger; centred when
    ``rng`` is None).  Padding is known background."""
    SH, SW = canvas
    H, W = x.shape[1:]
    xo = np.zeros((x.shape[0], SH, SW), dtype=np.float32)
    to = np.zeros((t.shape[0], SH, SW), dtype=np.float32)
    to[BACKGROUND] = 1.0
    to[KNOWN] = 1.0

    def place(n, S):  # source start, dest start, length along one axis
        if n <= S:
            d = int(rng.integers(0, S - n + 1)) if rng is not None else (S - n) // 2
            return 0, d, n
        s = int(rng.integers(0, n - S + 1)) if rng is not None else (n - S) // 2
        return s, 0, S

    sr, dr, lr = place(H, SH)
    sc, dc, lc = place(W, SW)
    xo[:, dr:dr + lr, dc:dc + lc] = x[:, sr:sr + lr, sc:sc + lc]
    to[:, dr:dr + lr, dc:dc + lc] = t[:, sr:sr + lr, sc:sc + lc]
    return xo, to


def make_sample(p: Prepared, k: int, cfg: DetectorConfig, tcfg: DetectTrainConfig,
                rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """(input (C_in, SH, SW), target (N_TARGETS, SH, SW)) for slice ``k`` of a labelled scan;
    ``rng=None``: centred, no augmentation (validation)."""
    from .infer import stack_input
    from .randomised.appearance import remap

    x = stack_input(p.image, k, cfg.context)
    t = slice_targets(p.geom, k, p.image.shape[1:], cfg.spacing_mm, cfg.sigma_centre_mm,
                      slice_mm=p.grid.slice_mm, sigma_lateral_mm=cfg.sigma_lateral_mm,
                      region_radius_mm=cfg.region_radius_mm)
    xo, to = to_canvas(x, t, tcfg.canvas, rng)
    if rng is not None:
        inside = xo > 0
        xo = remap(xo, inside, rng)
        g = rng.uniform(*tcfg.gamma)
        xo = np.power(np.clip(xo, 0, None), g) * rng.uniform(*tcfg.contrast)
        if tcfg.noise > 0:
            xo = xo + rng.normal(0, rng.uniform(0, tcfg.noise), xo.shape)
        xo = xo.astype(np.float32)
    return xo, to


def make_randomised_sample(case, k: int, cfg: DetectorConfig, tcfg: DetectTrainConfig,
                           rng: np.random.Generator, centred: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A sample of a domain-randomised case (a new random appearance from ``rng``)."""
    from .randomised.cases import sample

    x, t = sample(case, k, cfg.context, cfg, rng)
    return to_canvas(x, t, tcfg.canvas, None if centred else rng)


class SliceSamples:
    """Map-style dataset: index -> a random (case, slice, placement, augmentation), from labelled
    scans (``prepared``) and/or domain-randomised cases (``randomised``)."""

    def __init__(self, prepared: list[Prepared], cfg: DetectorConfig, tcfg: DetectTrainConfig, train: bool,
                 randomised: list | tuple = ()):
        if not prepared and not randomised:
            raise SpineSSLError("no scans to sample from")
        self.prepared, self.cfg, self.tcfg, self.train = prepared, cfg, tcfg, train
        self.randomised = list(randomised)
        self.spine = [c.spine_slices for c in self.randomised]
        self.fixed = None
        if not train:  # a fixed, spread-out set of slices (and appearances)
            rng = np.random.default_rng(tcfg.seed + 7)
            self.fixed = [self._draw(rng) for _ in range(tcfg.val_samples)]

    def _draw(self, rng):
        use_r = bool(self.randomised) and (not self.prepared or rng.random() < self.tcfg.randomised_fraction)
        if use_r:
            i = int(rng.integers(len(self.randomised)))
            case, spine, n = self.randomised[i], self.spine[i], self.randomised[i].tissue.shape[0]
        else:
            case = self.prepared[int(rng.integers(len(self.prepared)))]
            spine, n = case.spine_slices, case.image.shape[0]
        if len(spine) and rng.random() < self.tcfg.spine_slice_fraction:
            k = int(rng.choice(spine))
        else:
            k = int(rng.integers(n))
        return use_r, case, k

    def __len__(self):
        return len(self.fixed) if self.fixed is not None else self.tcfg.samples_per_epoch

    def __getitem__(self, idx):
        import torch

        if self.fixed is not None:
            use_r, case, k = self.fixed[idx]
            if use_r:
                x, t = make_randomised_sample(case, k, self.cfg, self.tcfg,
                                              np.random.default_rng([self.tcfg.seed + 7, int(idx)]), centred=True)
            else:
                x, t = make_sample(case, k, self.cfg, self.tcfg, None)
        else:
            rng = np.random.default_rng([self.tcfg.seed, int(idx)])
            use_r, case, k = self._draw(rng)
            x, t = (make_randomised_sample if use_r else make_sample)(case, k, self.cfg, self.tcfg, rng)
        return {"image": torch.from_numpy(x), "target": torch.from_numpy(t)}


class EpochSampler:
    """Indices ``epoch * n ... epoch * n + n - 1`` in a seeded random order, split by rank under
    torchrun; ``set_epoch`` is called by the training loop."""

    def __init__(self, n: int, seed: int = 0):
        from ..train import dist_info

        self.n, self.seed, self.epoch = n, seed, 0
        info = dist_info()
        self.rank, self.world = info.rank, info.world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) + self.epoch * self.n
        return iter(order[self.rank::self.world].tolist())

    def __len__(self):
        return len(range(self.rank, self.n, self.world))


def make_loss(tcfg: DetectTrainConfig):
    """``loss_fn(model, batch, train)`` for ``train.fit``: weighted cross-entropy of the class
    map (vertebra pixels weighted up, S1 and sacrum more: the anchor) + positive-weighted BCE of
    the centre map, both over the pixels whose class is known."""
    import torch
    import torch.nn.functional as F

    def loss_fn(model, batch, train):
        logits = model(batch["image"]).float()
        tgt = batch["target"].float()
        onehot = tgt[:, :N_CLASSES]  # class indicators: one 1, or several (an allowed set)
        known = tgt[:, KNOWN]
        single = (onehot.sum(dim=1) < 1.5).float()
        anchor = (onehot[:, S1_CLASS] + onehot[:, SACRUM]) * single
        w = 1.0 + (tcfg.vertebra_weight - 1.0) * (1.0 - onehot[:, BACKGROUND]) * single + (
            tcfg.anchor_weight - tcfg.vertebra_weight) * anchor
        lg = logits[:, :N_CLASSES]
        ce = torch.logsumexp(lg, dim=1) - torch.logsumexp(lg.masked_fill(onehot < 0.5, float("-inf")), dim=1)
        l_cls = (w * ce).sum() / w.sum().clamp_min(1.0)
        tc = tgt[:, CENTRE]
        wc = (1.0 + tcfg.pos_weight_centre * tc) * known
        bce = F.binary_cross_entropy_with_logits(logits[:, CENTRE], tc, reduction="none")
        l_c = (wc * bce).sum() / wc.sum().clamp_min(1.0)
        with torch.no_grad():
            pred = logits[:, :N_CLASSES].argmax(dim=1)
            truth = onehot.argmax(dim=1)
            fg = (truth != BACKGROUND) & (single > 0)
            acc = (pred[fg] == truth[fg]).float().mean() if fg.any() else torch.tensor(float("nan"))
        return l_cls + l_c, {"classes": l_cls.detach(), "centre": l_c.detach(), "vertebra_pixel_acc": acc}

    return loss_fn


@dataclass
class DetectTrainResult:
    fit: object  # train.FitResult
    n_train: int
    n_val: int


def train_detector(train_cases: list[Case], val_cases: list[Case], out_dir, cfg: DetectorConfig,
                   tcfg: DetectTrainConfig, train_cfg, *, resume: bool = False, extra: dict | None = None,
                   num_threads: int | None = None, randomised_train: list | tuple = (),
                   randomised_val: list | tuple = (), init=None) -> DetectTrainResult:
    """Train on ``train_cases`` and/or the domain-randomised ``randomised_train`` (validation loss
    on ``val_cases`` + ``randomised_val`` drives the plateau schedule and the ``best/``
    checkpoint; ``init``: a detector model folder to start from, ``model.init_from_model``) with
    ``SpineSSLLib.train.fit``; writes ``out_dir/best``, ``out_dir/last``,
    ``out_dir/log.csv``, ``out_dir/fit.json``."""
    import torch

    from ..train import fit, make_loader, select_device
    from .model import build_network, checkpoint_config

    if num_threads:
        torch.set_num_threads(num_threads)
    if not train_cases and not randomised_train:
        raise SpineSSLError("no training scans with levels")
    tr = prepare(train_cases, cfg, "preparing training scans") if train_cases else []
    va = prepare(val_cases, cfg, "preparing validation scans") if val_cases else []
    device = select_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    net = build_network(cfg)
    meta = {}
    if init and not resume:  # fine-tuning: the starting weights (a resumed run has its own)
        from .model import init_from_model

        src = init_from_model(net, init)
        meta["initialised_from"] = src.get("config", {}).get("name") or str(init)
    train_ds = SliceSamples(tr, cfg, tcfg, train=True, randomised=randomised_train)
    train_loader = _loader(train_ds, train_cfg, device, EpochSampler(len(train_ds), tcfg.seed))
    val_loader = (make_loader(SliceSamples(va, cfg, tcfg, train=False, randomised=randomised_val),
                              train_cfg.batch_size, shuffle=False, num_workers=train_cfg.num_workers, device=device)
                  if va or randomised_val else None)
    meta |= {"train_scans": len(tr), "val_scans": len(va), "randomised_train": len(randomised_train),
            "randomised_val": len(randomised_val), "train": tcfg.to_dict()}
    meta.update(extra or {})
    res = fit(net, make_loss(tcfg), train_loader, val_loader, train_cfg, out_dir,
              checkpoint_config=checkpoint_config(cfg, meta), resume=resume, device=device)
    return DetectTrainResult(res, len(tr), len(va))


def _loader(ds, train_cfg, device, sampler):
    from torch.utils.data import DataLoader

    return DataLoader(ds, batch_size=train_cfg.batch_size, sampler=sampler, num_workers=train_cfg.num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=train_cfg.num_workers > 0,
                      drop_last=False)


__all__ = ["DetectTrainConfig", "train_detector", "make_sample", "make_randomised_sample", "SliceSamples", "prepare",
           "make_loss", "CHANNELS", "N_TARGETS"]
