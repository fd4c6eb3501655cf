"""``Scan``: a volume as float32 ``(K, J, I)`` voxels plus its voxel -> patient LPS affine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scan:
    array: np.ndarray  # (K, J, I) float32
    affine: np.ndarray  # 4x4, (i, j, k, 1) -> LPS mm
    meta: dict = field(default_factory=dict)  # non-identifying acquisition facts only

    def __post_init__(self):
        self.affine = np.asarray(self.affine, dtype=np.float64).reshape(4, 4)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (di, dj, dk) in mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    def index_to_lps(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def lps_to_index(self, lps) -> np.ndarray:
        lps = np.asarray(lps, dtype=np.float64)
        inv = np.linalg.inv(self.affine)
        return lps @ inv[:3, :3].T + inv[:3, 3]

