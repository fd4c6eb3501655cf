"""Label maps in the SPIDER numbering, and writing them as NIfTI.

SPIDER (van der Graaf et al. 2024): vertebrae are numbered from the bottom, L5 = 1 when there is
no transitional vertebra (L4 = 2, ... T12 = 6, T11 = 7, T10 = 8); discs 201+ with L5/S1 = 201,
L4/L5 = 202 ... T12/L1 = 206, T11/T12 = 207, T10/T11 = 208; spinal canal = 100.

SPIDER's 1-25 vertebra range starts at L5 and has no value for the sacrum.  SpineSSL's
synthetic label maps give the S1 segment (the sacral body under the L5-S1 disc, which is the
"S1" ground-truth level) the value ``SACRUM_LABEL = 26``, outside SPIDER's vertebra range so
SPIDER-convention importers do not confuse it with a lumbar level; the lower sacral segments
(S2, S3) are left unlabelled.  ``SpineSSLLib.levels`` label-map adapters map 26 -> "S1".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import atomic

CANAL_LABEL = 100
SACRUM_LABEL = 26
_VERTEBRA_FROM_BOTTOM = ("L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8")
VERTEBRA_LABELS = {name: i + 1 for i, name in enumerate(_VERTEBRA_FROM_BOTTOM)} | {"S1": SACRUM_LABEL}
DISC_LABELS = {f"{a}-{b}": 201 + i for i, (b, a) in enumerate(
    zip(("S1",) + _VERTEBRA_FROM_BOTTOM[:-1], _VERTEBRA_FROM_BOTTOM))}


def vertebra_label(name: str) -> int:
    """SPIDER value of a vertebra (0 for unlabelled segments such as S2)."""
    return VERTEBRA_LABELS.get(name, 0)


def disc_label(name: str) -> int:
    """SPIDER value of a disc named "<upper>-<lower>" (0 if not a SPIDER disc)."""
    return DISC_LABELS.get(name, 0)


def label_names() -> dict[int, str]:
    """Label value -> structure name (vertebrae, discs, "canal")."""
    out = {v: k for k, v in VERTEBRA_LABELS.items()}
    out.update({v: k for k, v in DISC_LABELS.items()})
    out[CANAL_LABEL] = "canal"
    return out


def write_labelmap(path, labels: np.ndarray, affine: np.ndarray) -> Path:
    """Write a (K, J, I) label array with voxel->LPS ``affine`` as NIfTI (.nii.gz) atomically.

    The image geometry is ITK's (LPS); the NIfTI writer stores it as RAS in the header as NIfTI
    requires, so SimpleITK / nibabel / Slicer read it back in the same physical place.
    """
    import SimpleITK as sitk

    path = Path(path)
    A = np.asarray(affine, dtype=float)
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    direction = A[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(np.uint16)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(v) for v in A[:3, 3]])
    img.SetDirection([float(v) for v in direction.reshape(-1)])
    with atomic.atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
    return path
