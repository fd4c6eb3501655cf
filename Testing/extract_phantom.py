"""A small analytic lumbar-spine phantom with exact ground truth, for io/levels/extract tests.

Vertebral bodies are tilted boxes (known corners, centroid, width) with a bright marker disc
near their anterior-superior corner (so orientation errors show up), discs are bright boxes
between them.  The phantom is rendered analytically in *patient LPS space* for any affine, so
a rotated/flipped/reordered copy of a series sees exactly the same anatomy.
"""

from __future__ import annotations

import numpy as np

from SpineSSLLib import LEVEL_NAMES
from SpineSSLLib.io import Scan
from SpineSSLLib.levels import Level, LevelSet

VB_WIDTH = 36.0  # mm, anterior-posterior
VB_HEIGHT = 26.0  # mm
DISC_HEIGHT = 9.0
VB_DEPTH = 40.0  # mm, left-right extent
VB_VALUE, DISC_VALUE, MARKER_VALUE, BG_VALUE = 300.0, 600.0, 900.0, 40.0


def sagittal_affine(shape=(15, 256, 128), spacing=(1.1, 1.1, 4.0), origin=(28.0, -60.0, 90.0)):
    """Standard sagittal DICOM affine: columns -> posterior (+y), rows -> inferior (-z), slices
    along the IOP normal (+y) x (-z) = -x (towards the patient's right), so a DICOM reader
    returns the same array.  ``spacing`` = (column, row, slice) mm."""
    di, dj, dk = spacing
    a = np.eye(4)
    a[:3, 0] = [0, di, 0]
    a[:3, 1] = [0, 0, -dj]
    a[:3, 2] = [-dk, 0, 0]
    a[:3, 3] = origin
    return a


def truth_levels(tilt_deg: float = 8.0, lateral_shift: float = 0.0, top=(0.0, 0.0, 70.0)) -> LevelSet:
    """T12..S1 boxes stacked along a spine axis tilted by ``tilt_deg`` in the sagittal plane.
    ``lateral_shift`` mm per level moves centres in x (scoliosis-like)."""
    t = np.radians(tilt_deg)
    down = np.array([0.0, np.sin(t), -np.cos(t)])  # superior -> inferior
    post = np.array([0.0, np.cos(t), np.sin(t)])  # anterior -> posterior
    levels = {}
    c = np.array(top, dtype=np.float64)
    for i, name in enumerate(LEVEL_NAMES):
        ci = c + i * (VB_HEIGHT + DISC_HEIGHT) * down + np.array([lateral_shift * i, 0, 0])
        w, h = VB_WIDTH / 2, VB_HEIGHT / 2
        corners = np.stack([ci - w * post - h * down, ci + w * post - h * down,
                            ci + w * post + h * down, ci - w * post + h * down])
        levels[name] = Level(name, ci, corners)
    return LevelSet(levels, [], "phantom")


def render(affine, shape, levels: LevelSet, tilt_deg: float = 8.0) -> np.ndarray:
    """Analytic phantom sampled at the voxel centres of (shape, affine)."""
    K, J, I = shape
    kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(np.float64)
    p = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    t = np.radians(tilt_deg)
    down = np.array([0.0, np.sin(t), -np.cos(t)])
    post = np.array([0.0, np.cos(t), np.sin(t)])
    img = np.full(len(p), BG_VALUE)
    names = [n for n in LEVEL_NAMES if n in levels]
    for idx, name in enumerate(names):
        lev = levels[name]
        d = p - lev.centroid
        a, b, x = d @ post, d @ down, d[:, 0]
        inside = (np.abs(a) <= VB_WIDTH / 2) & (np.abs(b) <= VB_HEIGHT / 2) & (np.abs(x) <= VB_DEPTH / 2)
        # gentle gradient so the median is meaningful, marker near the anterior-superior corner
        img[inside] = VB_VALUE * (1 + 0.1 * a[inside] / VB_WIDTH)
        marker = inside & ((a + VB_WIDTH / 2 - 7) ** 2 + (b + VB_HEIGHT / 2 - 6) ** 2 <= 16)
        img[marker] = MARKER_VALUE
        if idx + 1 < len(names):
            nxt = levels[names[idx + 1]]
            mid = 0.5 * (lev.centroid + nxt.centroid)
            d = p - mid
            a, b, x = d @ post, d @ down, d[:, 0]
            disc = (np.abs(a) <= VB_WIDTH / 2 - 1) & (np.abs(b) <= DISC_HEIGHT / 2 - 0.5) & (np.abs(x) <= VB_DEPTH / 2)
            img[disc] = DISC_VALUE
    return img.reshape(K, J, I).astype(np.float32)


def phantom_scan(shape=(15, 256, 128), spacing=(1.1, 1.1, 4.0), tilt_deg=8.0, lateral_shift=0.0,
                 affine=None) -> tuple[Scan, LevelSet]:
    aff = sagittal_affine(shape, spacing) if affine is None else affine
    levels = truth_levels(tilt_deg, lateral_shift)
    return Scan(render(aff, shape, levels, tilt_deg), aff), levels


def relabel_affine(affine, shape, flip_i=False, flip_j=False, flip_k=False, transpose_ij=False):
    """An affine describing the *same physical grid* with voxel axes flipped/transposed, and the
    function mapping the original array to the new array."""
    K, J, I = shape
    a = np.asarray(affine, dtype=np.float64).copy()
    ops = []
    if flip_i:
        a[:3, 3] = a[:3, 3] + a[:3, 0] * (I - 1)
        a[:3, 0] = -a[:3, 0]
        ops.append(lambda x: x[:, :, ::-1])
    if flip_j:
        a[:3, 3] = a[:3, 3] + a[:3, 1] * (J - 1)
        a[:3, 1] = -a[:3, 1]
        ops.append(lambda x: x[:, ::-1, :])
    if flip_k:
        a[:3, 3] = a[:3, 3] + a[:3, 2] * (K - 1)
        a[:3, 2] = -a[:3, 2]
        ops.append(lambda x: x[::-1])
    if transpose_ij:
        a[:3, [0, 1]] = a[:3, [1, 0]]
        ops.append(lambda x: np.swapaxes(x, 1, 2))

    def apply(x):
        for op in ops:
            x = op(x)
        return np.ascontiguousarray(x)

    return a, apply


SYNTH_LABELS = {"T12": 6, "L1": 5, "L2": 4, "L3": 3, "L4": 2, "L5": 1, "S1": 26}


def render_labels(affine, shape, levels: LevelSet, tilt_deg: float = 8.0, values=SYNTH_LABELS) -> np.ndarray:
    """Label map of the phantom's vertebral bodies (synthetic preset numbering by default)."""
    K, J, I = shape
    kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3).astype(np.float64)
    p = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    t = np.radians(tilt_deg)
    down = np.array([0.0, np.sin(t), -np.cos(t)])
    post = np.array([0.0, np.cos(t), np.sin(t)])
    lab = np.zeros(len(p), np.int16)
    for name in levels.names:
        d = p - levels[name].centroid
        inside = (np.abs(d @ post) <= VB_WIDTH / 2) & (np.abs(d @ down) <= VB_HEIGHT / 2) & (np.abs(d[:, 0]) <= VB_DEPTH / 2)
        lab[inside] = values[name]
    return lab.reshape(K, J, I)


def write_image(path, arr, affine):
    """Write (K, J, I) + voxel->LPS affine with SimpleITK (NIfTI/NRRD/MHA by extension)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    sp = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in sp])
    img.SetDirection([float(v) for v in (np.asarray(affine)[:3, :3] / sp).reshape(-1)])
    img.SetOrigin([float(v) for v in np.asarray(affine)[:3, 3]])
    sitk.WriteImage(img, str(path))
    return path


def spinenet_dicts(scan: Scan, levels: LevelSet, extra=()) -> list[dict]:
    """SpineNet-style vert_dicts for the levels (pixel coords of ``scan``), in shuffled corner order."""
    out = []
    for lev in levels:
        ijk = scan.lps_to_index(lev.corners)
        k = float(np.mean(ijk[:, 2]))
        poly = ijk[[2, 0, 3, 1], :2]  # deliberately not in SpineSSL corner order
        ks = int(round(k))
        out.append({"predicted_label": lev.name, "average_polygon": poly.tolist(),
                    "slice_nos": [ks - 2, ks - 1, ks, ks + 1, ks + 2]})
    out.extend(extra)
    return out
