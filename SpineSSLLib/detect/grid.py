"""The detector's canonical sagittal grid.

Every sagittal slice of a ``Scan`` is resampled onto square pixels of ``spacing_mm`` with rows
running superior -> inferior and columns anterior -> posterior, whatever the acquisition's
in-plane orientation, flips or pixel size.  Slices stay the scan's own slices (index ``k``),
so slice ranges and mid slices are scan slice indices.  The map from grid ``(row, col, k)`` to
voxel ``(i, j, k)`` is affine, hence grid positions convert exactly to patient LPS mm through
the scan affine (obliquity is carried by the affine, not resampled away).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GeometryError, ImageContentError
from ..io import Scan

MAX_SLICE_TILT_DEG = 30.0


@dataclass
class SagittalGrid:
    spacing_mm: float
    shape: tuple[int, int]  # (H, W) grid rows, columns
    n_slices: int
    voxel_from_grid: np.ndarray  # 3x4: (i, j, k) = M @ (row, col, k, 1)
    affine: np.ndarray  # the scan's 4x4 voxel -> LPS affine

    @property
    def slice_mm(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 2]))

    def to_voxel(self, rck) -> np.ndarray:
        rck = np.asarray(rck, dtype=np.float64)
        return rck @ self.voxel_from_grid[:, :3].T + self.voxel_from_grid[:, 3]

    def to_lps(self, rck) -> np.ndarray:
        ijk = self.to_voxel(rck)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def from_lps(self, lps) -> np.ndarray:
        """(row, col, k) of LPS points (..., 3)."""
        lps = np.asarray(lps, dtype=np.float64)
        full = np.eye(4)
        full[:3, :] = self.voxel_from_grid
        g_from_lps = np.linalg.inv(self.affine @ full)
        return lps @ g_from_lps[:3, :3].T + g_from_lps[:3, 3]


def make_grid(scan: Scan, spacing_mm: float, multiple: int = 16, path=None) -> SagittalGrid:
    """The canonical grid of ``scan`` (raises ``GeometryError`` for non-sagittal stacks)."""
    A = np.asarray(scan.affine, dtype=np.float64)
    K, J, I = scan.shape
    cols = A[:3, :3]
    sp = np.linalg.norm(cols, axis=0)  # spacing of i, j, k
    if np.any(sp <= 0) or not np.all(np.isfinite(A)):
        raise GeometryError("degenerate voxel spacing in the image geometry", path)
    unit = cols / sp
    normal = np.cross(unit[:, 0], unit[:, 1])
    if abs(normal[0]) < np.cos(np.radians(MAX_SLICE_TILT_DEG)):
        raise GeometryError(f"not a sagittal series (slice normal {np.round(normal, 2).tolist()} in LPS)", path)
    # vertical voxel axis: the in-plane one most aligned with S; horizontal: the other
    vert = 0 if abs(unit[2, 0]) > abs(unit[2, 1]) else 1
    horiz = 1 - vert
    n_vox = (I, J)
    sign_v = -1.0 if unit[2, vert] > 0 else 1.0  # +1 step along the grid row goes inferior (-S)
    sign_h = 1.0 if unit[1, horiz] > 0 else -1.0  # +1 step along the grid column goes posterior (+P)
    multiple = max(int(multiple), 1)

    def size(axis):
        n = int(np.ceil(n_vox[axis] * sp[axis] / spacing_mm))
        return int(np.ceil(n / multiple) * multiple)

    fov = (n_vox[vert] * sp[vert], n_vox[horiz] * sp[horiz])
    min_fov = 2 * multiple * spacing_mm  # the network needs >= 2 grid cells at its coarsest level
    if min(fov) < min_fov:
        raise GeometryError(f"field of view {fov[0]:.0f} x {fov[1]:.0f} mm is too small for the detector "
                            f"(at least {min_fov:.0f} mm each way)", path)
    H, W = size(vert), size(horiz)
    M = np.zeros((3, 4))
    # voxel index along the vertical axis = centre + sign * (row - (H-1)/2) * spacing / voxel spacing
    M[vert, 0] = sign_v * spacing_mm / sp[vert]
    M[vert, 3] = (n_vox[vert] - 1) / 2 - M[vert, 0] * (H - 1) / 2
    M[horiz, 1] = sign_h * spacing_mm / sp[horiz]
    M[horiz, 3] = (n_vox[horiz] - 1) / 2 - M[horiz, 1] * (W - 1) / 2
    M[2, 2] = 1.0
    return SagittalGrid(float(spacing_mm), (H, W), K, M, A)


def normalise_intensity(volume: np.ndarray, path=None) -> np.ndarray:
    """Robust [0, ~1] scaling: (x - p1) / (p99.5 - p1), clipped to [0, 1.5]."""
    v = np.asarray(volume, dtype=np.float32)
    if not np.all(np.isfinite(v)):
        raise ImageContentError("image contains NaN or infinite values", path)
    lo, hi = np.percentile(v, [1.0, 99.5])
    if hi - lo <= 1e-6 * max(abs(hi), 1.0):
        raise ImageContentError("image is constant (no contrast to detect vertebrae)", path)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.5).astype(np.float32)


def resample(scan: Scan, grid: SagittalGrid, path=None) -> np.ndarray:
    """The scan's slices on the grid: (K, H, W) float32, normalised intensity, 0 outside."""
    from scipy import ndimage

    vol = normalise_intensity(scan.array, path)
    K, J, I = vol.shape
    H, W = grid.shape
    M = grid.voxel_from_grid
    rows, cols = np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64)
    # per-axis index vectors (the map is separable: each grid axis drives one voxel axis)
    i_of = M[0, 0] * rows[:, None] + M[0, 1] * cols[None, :] + M[0, 3]
    j_of = M[1, 0] * rows[:, None] + M[1, 1] * cols[None, :] + M[1, 3]
    sp = np.linalg.norm(grid.affine[:3, :3], axis=0)
    sigma = [max(0.0, 0.4 * (grid.spacing_mm / sp[1] - 1.0)), max(0.0, 0.4 * (grid.spacing_mm / sp[0] - 1.0))]
    out = np.zeros((K, H, W), dtype=np.float32)
    for k in range(K):
        sl = ndimage.gaussian_filter(vol[k], sigma) if max(sigma) > 0 else vol[k]
        out[k] = ndimage.map_coordinates(sl, [j_of, i_of], order=1, mode="constant", cval=0.0)
    return out
