"""Randomised training cases: a column + stack rendered once (tissue labels, cached), an image
drawn anew for every sample.

A case holds the tissue labels at label resolution (two sub-slices per slice), the training
classes of every slice already on the detector's canonical grid, the grid positions of every
vertebral body centre (T8..S1), the native image geometry and the truth levels T12..S1 (LPS).
``sample`` makes one training sample for slice ``k``: intensities, partial volume, native
pixels, scanner effects (``appearance``), then the very resampling the detector uses at
inference (``grid.resample``), then a random intensity curve.  Everything is a pure function of
(seed, case index) and of the sample's own random generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import LEVEL_NAMES
from ...io import Scan
from ...levels import Level, LevelSet
from ..grid import SagittalGrid, make_grid, resample
from ..targets import ABOVE, FIRST_LEVEL, SACRUM, class_targets
from . import appearance
from .anatomy import I_S1, I_T12, NAMES, draw_column
from .render import render_labels
from .stack import draw_stack

CACHE_VERSION = 1


@dataclass
class RandomCase:
    key: str
    tissue: np.ndarray  # (K, 2, J, I) uint8 tissue labels
    classes: np.ndarray  # (K, H, W) uint8 training classes on the grid
    centres: np.ndarray  # (n, 3) grid (row, col, k) of the body centres T8..S1
    affine: np.ndarray  # native voxel -> LPS
    factor: int
    label_mm: float
    thickness: float
    grid: SagittalGrid
    levels: LevelSet  # truth T12..S1 (bodies shown in at least one slice)
    sacrum_in_view: bool
    sacrum_style: str

    @property
    def native_shape(self) -> tuple[int, int, int]:
        K, _, J, I = self.tissue.shape
        return K, J * self.factor, I * self.factor

    @property
    def spine_slices(self) -> np.ndarray:
        return np.nonzero(self.classes.reshape(len(self.classes), -1).max(axis=1) > 0)[0]

    def inside(self) -> np.ndarray:
        """(H, W) grid pixels inside the image's field of view."""
        K, J, I = self.native_shape
        H, W = self.grid.shape
        rr, cc = np.mgrid[0:H, 0:W]
        v = self.grid.to_voxel(np.stack([rr, cc, np.zeros_like(rr)], axis=-1).astype(np.float64))
        return (v[..., 0] >= -0.5) & (v[..., 0] <= I - 0.5) & (v[..., 1] >= -0.5) & (v[..., 1] <= J - 0.5)


def _grid_classes(inst: np.ndarray, factor: int, grid: SagittalGrid) -> np.ndarray:
    from scipy import ndimage

    lut = np.zeros(256, dtype=np.uint8)
    for i, name in enumerate(NAMES):
        lut[i + 1] = ABOVE if i < I_T12 else (FIRST_LEVEL + i - I_T12 if i <= I_S1 else SACRUM)
    K = inst.shape[0]
    H, W = grid.shape
    rr, cc = np.mgrid[0:H, 0:W].astype(np.float64)
    v = grid.to_voxel(np.stack([rr, cc, np.zeros_like(rr)], axis=-1))
    coords = [(v[..., 1] - (factor - 1) / 2) / factor, (v[..., 0] - (factor - 1) / 2) / factor]
    out = np.zeros((K, H, W), dtype=np.uint8)
    for k in range(K):
        lab = ndimage.map_coordinates(inst[k], coords, order=0, mode="constant", cval=0)
        out[k] = lut[lab]
    return out


def build_case(seed: int, index: int, spacing_mm: float = 2.0, multiple: int = 16,
               no_sacrum: float = 0.12) -> RandomCase:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7101]))
    col = draw_column(rng)
    stack = draw_stack(rng, col, no_sacrum=no_sacrum)
    sacral_as_marrow = bool(rng.random() < 0.7)
    tissue, inst = render_labels(col, stack, sacral_as_marrow)
    A = stack.native_affine()
    shape = stack.native_shape
    grid = make_grid(Scan(np.broadcast_to(np.float32(0), shape), A), spacing_mm, multiple)
    classes = _grid_classes(inst, stack.factor, grid)
    centres = np.array([grid.from_lps(stack.to_lps(b.centre)) for b in col.bodies if b.index <= I_S1])
    levels = {}
    for b in col.bodies:
        if not I_T12 <= b.index <= I_S1:
            continue
        shown = np.nonzero((inst == b.index + 1).any(axis=(1, 2)))[0]
        if len(shown) == 0:
            continue
        kc = float(grid.from_lps(stack.to_lps(b.centre))[2])
        name = LEVEL_NAMES[b.index - I_T12]
        levels[name] = Level(name, stack.to_lps(b.centre), stack.to_lps(b.corners()),
                             (int(shown.min()), int(shown.max())), int(np.clip(round(kc), 0, shape[0] - 1)))
    key = f"r{seed}-{index:05d}"
    return RandomCase(key, tissue, classes, centres, A, stack.factor, stack.label_mm, stack.thickness, grid,
                      LevelSet(levels, [], f"randomised:{key}"), stack.sacrum_in_view, col.sacrum_style)


# ----------------------------------------------------------------------------------- cache

def save_case(case: RandomCase, folder) -> Path:
    from ...atomic import atomic_path

    p = Path(folder) / f"{case.key}.npz"
    meta = {"version": CACHE_VERSION, "key": case.key, "factor": case.factor, "label_mm": case.label_mm,
            "thickness": case.thickness, "spacing_mm": case.grid.spacing_mm, "grid_shape": list(case.grid.shape),
            "sacrum_in_view": case.sacrum_in_view, "sacrum_style": case.sacrum_style,
            "levels": case.levels.to_dict()}
    with atomic_path(p, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, tissue=case.tissue, classes=case.classes, centres=case.centres,
                                affine=case.affine, voxel_from_grid=case.grid.voxel_from_grid,
                                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return p


def load_case(path) -> RandomCase:
    with np.load(path) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        if meta.get("version") != CACHE_VERSION:
            raise ValueError("cache version")
        tissue, classes, centres, A, M = (z[k] for k in ("tissue", "classes", "centres", "affine", "voxel_from_grid"))
    grid = SagittalGrid(meta["spacing_mm"], tuple(meta["grid_shape"]), tissue.shape[0], M, A)
    return RandomCase(meta["key"], tissue, classes, centres, A, meta["factor"], meta["label_mm"], meta["thickness"],
                      grid, LevelSet.from_dict(meta["levels"]), meta["sacrum_in_view"], meta["sacrum_style"])


def _build_one(args):
    seed, index, folder, spacing_mm, multiple = args
    p = Path(folder) / f"r{seed}-{index:05d}.npz"
    if p.is_file():
        try:
            return load_case(p)
        except (ValueError, OSError, KeyError):
            pass
    case = build_case(seed, index, spacing_mm, multiple)
    save_case(case, folder)
    return case


def build_cases(folder, seed: int, n: int, spacing_mm: float = 2.0, multiple: int = 16, workers: int = 1,
                desc: str = "randomised cases") -> list[RandomCase]:
    """Cases 0..n-1 of ``seed``, made once and cached in ``folder`` (re-used when present)."""
    from ...progress import track

    Path(folder).mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, str(folder), spacing_mm, multiple) for i in range(n)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            return list(track(pool.imap(_build_one, jobs), total=n, desc=desc, unit="case"))
    return [_build_one(j) for j in track(jobs, desc=desc, unit="case")]


# --------------------------------------------------------------------------------- samples

def image(case: RandomCase, ks, rng: np.random.Generator, native: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """Image of slices ``ks`` with one random appearance and its voxel -> LPS affine: native
    pixels (len(ks), J*f, I*f), or with ``native=False`` label pixels with the noise level of
    native ones (training samples: 4x cheaper when f = 2, the same after resampling to 2 mm
    pixels up to the noise texture)."""
    mu, contrast = appearance.tissue_means(rng)
    img = appearance.intensities(case.tissue[list(ks)], mu, rng, case.label_mm)
    A = case.affine
    if not native and case.factor > 1:
        f = case.factor
        A = A.copy()
        A[:3, 3] = A[:3, 3] + (f - 1) / 2 * (A[:3, 0] + A[:3, 1])
        A[:3, :2] = A[:3, :2] * f
    return appearance.acquire(img, case.factor, rng, upsample=native), A, contrast


def sample(case: RandomCase, k: int, context: int, cfg, rng: np.random.Generator):
    """(input (2 context + 1, H, W), targets (N_TARGETS, H, W)) of slice ``k`` on the case grid;
    ``cfg``: the ``DetectorConfig``."""
    K = case.tissue.shape[0]
    ks = np.clip(np.arange(k - context, k + context + 1), 0, K - 1)
    uniq, inv = np.unique(ks, return_inverse=True)
    img, A, _ = image(case, uniq, rng, native=False)
    grid = case.grid
    if case.factor > 1:  # the grid of the label-pixel image: voxel index = (native index - (f-1)/2) / f
        f = case.factor
        M = grid.voxel_from_grid.copy()
        M[:2] = (M[:2] - np.array([[0, 0, 0, (f - 1) / 2]])) / f
        grid = SagittalGrid(grid.spacing_mm, grid.shape, grid.n_slices, M, A)
    x = resample(Scan(img, A), grid)[inv]
    x = appearance.remap(x, case.inside()[None], rng)
    t = class_targets(case.classes[k], case.centres, k, cfg.spacing_mm, cfg.sigma_centre_mm,
                      case.grid.slice_mm, cfg.sigma_lateral_mm)
    return x.astype(np.float32), t


def scan(case: RandomCase, rng: np.random.Generator) -> tuple[Scan, str]:
    """The whole case as one scan (every slice, one appearance): for evaluation cohorts."""
    nat, A, contrast = image(case, range(case.tissue.shape[0]), rng)
    return Scan(nat, A), contrast
