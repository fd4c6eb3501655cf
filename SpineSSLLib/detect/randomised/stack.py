"""A random sagittal slice stack on a random column: field of view, resolution, slices, pose.

Stack axes (columns of ``rotation``, body frame): ``e_i`` posterior (image columns), ``e_j``
inferior (image rows), ``e_k`` the slice normal (patient's right), then rotated in-plane
(+-18 deg, mostly small) and out of plane (obliquity up to 6 deg).  The field of view's top edge
lies anywhere from T9 to the centre of L2, its bottom edge anywhere from S1 to below the
coccyx (12 % of stacks end above the sacrum instead), with 6-9 vertebrae T9..S1 in view.
Labels are rendered at ``label_mm`` = ``factor`` x the native pixel size (0.4-1.2 mm), so that
fine native pixels cost no memory: the native image repeats every label pixel factor x factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...synth.anatomy import axis_rotation
from .anatomy import I_S1, NAMES, Column


@dataclass
class Stack:
    rotation: np.ndarray  # 3x3, columns e_i, e_j, e_k in the body frame
    origin: np.ndarray  # body-frame centre of label pixel (0, 0) of slice 0
    label_mm: float
    factor: int  # native pixels per label pixel (each way)
    thickness: float
    between: float
    shape: tuple[int, int, int]  # (K, J, I) at label resolution
    translation: np.ndarray  # body frame -> LPS
    sacrum_in_view: bool

    @property
    def native_mm(self) -> float:
        return self.label_mm / self.factor

    @property
    def native_shape(self) -> tuple[int, int, int]:
        K, J, I = self.shape
        return K, J * self.factor, I * self.factor

    def native_affine(self) -> np.ndarray:
        """Voxel (i, j, k) -> LPS of the native image (whose pixels tile the label pixels)."""
        e_i, e_j, e_k = self.rotation.T
        s = self.native_mm
        A = np.eye(4)
        A[:3, 0], A[:3, 1], A[:3, 2] = e_i * s, e_j * s, e_k * self.between
        A[:3, 3] = self.origin + (0.5 - self.factor / 2) * s * (e_i + e_j) + self.translation
        return A

    def to_lps(self, p) -> np.ndarray:
        return np.asarray(p, dtype=np.float64) + self.translation


def draw_stack(rng: np.random.Generator, col: Column, no_sacrum: float = 0.12) -> Stack:
    base = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])  # e_i, e_j, e_k
    inplane = float(np.clip(rng.normal(0, 7.0), -18, 18))
    rot = axis_rotation
    R = rot(1, rng.uniform(-6, 6)) @ rot(2, rng.uniform(-6, 6)) @ rot(0, inplane) @ base
    e_i, e_j, e_k = R.T
    names = [b.name for b in col.bodies]
    cen = {b.name: b.centre for b in col.bodies}
    t = {n: float(cen[n] @ e_j) for n in names}
    half = {b.name: b.height / 2 for b in col.bodies}
    low = max(t[n] + half[n] for n in names if NAMES.index(n) >= I_S1)  # lowest sacral / coccygeal point
    sacrum = rng.random() >= no_sacrum
    mobile = [n for n in NAMES[1:I_S1 + 1]]  # T9 .. S1 count as "vertebrae in view"
    for _ in range(60):
        top = rng.uniform(t["T9"] - 1.4 * half["T9"], t["L2"])
        if sacrum:
            lo = t["S1"] + 0.4 * half["S1"]
            bottom = rng.uniform(lo, max(low + 15.0, lo + 10.0))
        else:
            bottom = rng.uniform(t["L4"], t["S1"] - 0.5 * half["S1"])
        n_in = sum(top <= t[n] <= bottom for n in mobile)
        if (6 if sacrum else 4) <= n_in <= 9:
            break
    height = max(bottom - top, 150.0)  # the detector needs >= 128 mm each way
    width = rng.uniform(180.0, 330.0)
    vis = [b for b in col.bodies if top <= t[b.name] <= bottom] or col.bodies
    ti = np.mean([b.centre @ e_i for b in vis])
    left = ti - rng.uniform(0.3, 0.62) * width  # anterior edge
    native = rng.uniform(0.4, 1.2)
    factor = max(1, int(round(0.9 / native)))
    label_mm = native * factor
    thickness = rng.uniform(3.0, 6.0)
    between = thickness * rng.uniform(1.0, 1.3)
    K = int(rng.integers(9, 22))
    tk = np.mean([b.centre @ e_k for b in vis]) + rng.uniform(-0.2, 0.2) * K * between
    J, I = int(np.ceil(height / label_mm)), int(np.ceil(width / label_mm))
    origin = (top + label_mm / 2) * e_j + (left + label_mm / 2) * e_i + (tk - (K - 1) / 2 * between) * e_k
    translation = np.array([0.0, 30.0, 80.0]) + rng.normal(0, 20.0, 3)
    return Stack(R, origin, float(label_mm), factor, float(thickness), float(between), (K, J, I),
                 translation, bool(sacrum))
