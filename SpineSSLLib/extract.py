"""VB (224x224x9) and IVD (112x224x9) volumes from a scan and its levels (paper §2.1).

Conventions (paper where it speaks, SpineNet V1 where it is silent; see docs/extraction.md):

- Every volume is centred on its structure's own mid-sagittal slice (per-structure alignment,
  so scoliosis does not misalign slices): slice 4 of the volume is the scan slice nearest the
  structure's centre, slices 0..8 are the scan's neighbouring slices, ordered right-to-left
  (patient +x) whatever the file order, zero where the scan has no slice (slice-wise padding).
- In-plane, volumes are resampled in physical space: columns run anterior->posterior, rows
  superior->inferior.  VB: the patch is ``vb_fov`` x the VB width wide (width = mean length of
  its two endplates), centred on the VB centroid and rotated so the endplates are horizontal.
  IVD: centred on the four corners bounding the disc (upper VB's inferior corners, lower VB's
  superior corners), rotated so the disc is horizontal, width ``ivd_fov`` x the mean width of
  the two VBs, height half of that (same pixel size as its 224 columns).
- Intensity: divided by the median intensity of the neighbouring VBs (VB: the VBs above and
  below; IVD: the two VBs it separates; at the ends what exists), clipped to [0, 2], halved —
  so the neighbours' median maps to 0.5 (SpineNet V1).
- All in-plane samples of all 13 volumes (and the VB median probes) come from one batched
  ``torch.nn.functional.grid_sample`` call over the scan's slices (bilinear, zeros outside).

``extract_scan(scan, levels, config) -> ScanVolumes`` is the in-process API (the Slicer scene
layer calls it on a volume node's array/affine); ``save_volumes``/``load_volumes`` use the
``volumes/<scan_key>.npz`` contract of docs/developer.md.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import DISC_NAMES, LEVEL_NAMES
from .levels import LevelSet, check_in_volume, estimate_corners

_POSTERIOR = np.array([0.0, 1.0, 0.0])
_SUPERIOR = np.array([0.0, 0.0, 1.0])


@dataclass
class ExtractConfig:
    vb_shape: tuple[int, int] = (224, 224)  # rows, columns
    ivd_shape: tuple[int, int] = (112, 224)
    n_slices: int = 9
    vb_fov: float = 2.0  # VB patch width / VB width
    ivd_fov: float = 2.0  # IVD patch width / mean width of the two adjacent VBs
    align_vb: bool = True  # rotate each VB so its endplates are horizontal
    median_grid: int = 12  # per VB: median_grid^2 probe points per slice, 3 slices
    median_inset: float = 0.15  # probes stay this fraction of the outline away from its edges
    clip: float = 2.0  # SpineNet: intensity / median clipped to [0, clip], divided by clip
    min_width_mm: float = 8.0
    max_width_mm: float = 120.0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"

    def __post_init__(self):
        from .errors import ConfigError

        if self.n_slices < 1 or self.n_slices % 2 == 0:
            raise ConfigError(f"n_slices must be odd and positive, got {self.n_slices}")
        if min(self.vb_shape + self.ivd_shape) < 2:
            raise ConfigError("volume shapes must be at least 2x2")
        if self.vb_fov <= 0 or self.ivd_fov <= 0 or self.clip <= 0:
            raise ConfigError("vb_fov, ivd_fov and clip must be positive")


@dataclass
class ScanVolumes:
    vb: np.ndarray  # (7, S, H, W) float32 in [0, 1]
    vb_present: np.ndarray  # (7,) bool
    vb_affine: np.ndarray  # (7, 4, 4) volume voxel (i, j, k, 1) -> LPS mm (zeros when absent)
    ivd: np.ndarray  # (6, S, h, W)
    ivd_present: np.ndarray  # (6,)
    ivd_affine: np.ndarray  # (6, 4, 4)
    levels: tuple = LEVEL_NAMES
    discs: tuple = DISC_NAMES
    vb_mid_slice: np.ndarray = None  # (7,) scan slice index of each volume's slice 4, -1 absent
    ivd_mid_slice: np.ndarray = None  # (6,)
    vb_width_mm: np.ndarray = None  # (7,) VB width used for scaling, 0 absent
    vb_median: np.ndarray = None  # (7,) raw median intensity of each VB, 0 absent
    issues: list = field(default_factory=list)

    @property
    def n_present(self) -> int:
        return int(self.vb_present.sum() + self.ivd_present.sum())


def select_device(spec: str = "auto"):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _nearest_slice(kf: float, sgn: int) -> int:
    """Round a fractional slice index; exact halves go towards patient left (+x) so that a
    copy of the series with reversed slice order picks the same physical slice."""
    lo = np.floor(kf)
    frac = kf - lo
    if abs(frac - 0.5) < 1e-6:
        return int(lo + 1) if sgn > 0 else int(lo)
    return int(np.floor(kf + 0.5))


def _frame(u_raw: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit (u anterior->posterior, v superior->inferior) in the plane normal to ``n``."""
    u = u_raw - (u_raw @ n) * n
    norm = np.linalg.norm(u)
    if norm < 1e-9:
        u = _POSTERIOR - (_POSTERIOR @ n) * n
        norm = np.linalg.norm(u)
    u = u / norm
    if u @ _POSTERIOR < 0:
        u = -u
    v = np.cross(n, u)
    if v @ _SUPERIOR > 0:
        v = -v
    return u, v


@dataclass
class _Box:
    kind: str
    index: int
    kmid: int
    centre: np.ndarray  # on the kmid plane
    u: np.ndarray
    v: np.ndarray
    pixel: float  # mm per in-plane pixel
    width: float


def _plan(scan, levels: LevelSet, cfg: ExtractConfig):
    from .errors import GeometryError

    a = scan.affine[:3, :3]
    dk = float(np.linalg.norm(a[:, 2]))
    n_scan = a[:, 2] / dk
    sgn = 1 if n_scan[0] >= 0 else -1
    n = n_scan * sgn  # canonical slice direction: towards patient left
    if abs(float(a[:, 0] @ a[:, 2])) > 1e-3 * dk * np.linalg.norm(a[:, 0]) or \
            abs(float(a[:, 1] @ a[:, 2])) > 1e-3 * dk * np.linalg.norm(a[:, 1]):
        raise GeometryError("scan affine is sheared (slice axis not normal to the image plane)",
                            scan.meta.get("source"))
    issues = []
    vb_boxes: dict[str, _Box] = {}
    vb_widths: dict[str, float] = {}
    for li, name in enumerate(LEVEL_NAMES):
        if name not in levels:
            continue
        lev = levels[name]
        c = lev.corners
        width = 0.5 * (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3]))
        if not (cfg.min_width_mm <= width <= cfg.max_width_mm):
            issues.append(f"{name}: implausible VB width {width:.1f} mm; skipped")
            continue
        vb_widths[name] = width
        kmid = _nearest_slice(float(scan.lps_to_index(lev.centroid)[2]), sgn)
        p0 = scan.index_to_lps([0.0, 0.0, float(kmid)])
        centre = lev.centroid - ((lev.centroid - p0) @ n) * n
        u_raw = (c[1] - c[0]) + (c[2] - c[3]) if cfg.align_vb else _POSTERIOR
        u, v = _frame(u_raw, n)
        vb_boxes[name] = _Box("VB", li, kmid, centre, u, v, cfg.vb_fov * width / cfg.vb_shape[1], width)
    ivd_boxes: dict[str, _Box] = {}
    for di, (disc, up, lo) in enumerate(zip(DISC_NAMES, LEVEL_NAMES[:-1], LEVEL_NAMES[1:])):
        if up not in vb_boxes or lo not in vb_boxes:
            continue
        cu, cl = levels[up].corners, levels[lo].corners
        quad = np.stack([cu[3], cu[2], cl[1], cl[0]])  # upper AI, PI; lower PS, AS
        centre_raw = quad.mean(axis=0)
        kmid = _nearest_slice(float(scan.lps_to_index(centre_raw)[2]), sgn)
        p0 = scan.index_to_lps([0.0, 0.0, float(kmid)])
        centre = centre_raw - ((centre_raw - p0) @ n) * n
        u, v = _frame((cu[2] - cu[3]) + (cl[1] - cl[0]), n)
        width = 0.5 * (vb_widths[up] + vb_widths[lo])
        ivd_boxes[disc] = _Box("IVD", di, kmid, centre, u, v, cfg.ivd_fov * width / cfg.ivd_shape[1], width)
    return n, sgn, dk, vb_boxes, ivd_boxes, issues


def _box_affine(box: _Box, shape: tuple[int, int], n: np.ndarray, dk: float, n_slices: int) -> np.ndarray:
    H, W = shape
    aff = np.eye(4)
    aff[:3, 0] = box.u * box.pixel
    aff[:3, 1] = box.v * box.pixel
    aff[:3, 2] = n * dk
    aff[:3, 3] = box.centre - (W - 1) / 2 * aff[:3, 0] - (H - 1) / 2 * aff[:3, 1] - (n_slices // 2) * aff[:3, 2]
    return aff


def _median_points(corners: np.ndarray, centre: np.ndarray, n: np.ndarray, g: int, inset: float) -> np.ndarray:
    t = np.linspace(inset, 1 - inset, g)
    a, b = np.meshgrid(t, t, indexing="ij")  # a: superior->inferior, b: anterior->posterior
    a, b = a.reshape(-1, 1), b.reshape(-1, 1)
    AS, PS, PI, AI = corners
    top = AS + b * (PS - AS)
    bot = AI + b * (PI - AI)
    pts = top + a * (bot - top)
    return pts - ((pts - centre) @ n)[:, None] * n  # onto the VB's mid plane


def extract_scan(scan, levels: LevelSet, config: ExtractConfig | None = None) -> ScanVolumes:
    """Extract the 7 VB and 6 IVD volumes of one scan (absent ones are zero, flagged)."""
    import torch

    from .errors import LevelsError

    cfg = config or ExtractConfig()
    S, half = cfg.n_slices, cfg.n_slices // 2
    K, J, I = scan.shape
    issues = list(levels.issues)
    normal = scan.affine[:3, 2] / np.linalg.norm(scan.affine[:3, 2])
    levels = estimate_corners(check_in_volume(levels, scan), normal)
    issues += [s for s in levels.issues if s not in issues]
    n, sgn, dk, vb_boxes, ivd_boxes, plan_issues = _plan(scan, levels, cfg)
    issues += plan_issues

    nvb, nivd = len(LEVEL_NAMES), len(DISC_NAMES)
    (Hv, Wv), (Hd, Wd) = cfg.vb_shape, cfg.ivd_shape
    out = ScanVolumes(
        vb=np.empty(0, np.float32), vb_present=np.zeros(nvb, bool),
        vb_affine=np.zeros((nvb, 4, 4)), ivd=np.empty(0, np.float32),
        ivd_present=np.zeros(nivd, bool), ivd_affine=np.zeros((nivd, 4, 4)),
        vb_mid_slice=np.full(nvb, -1, np.int32), ivd_mid_slice=np.full(nivd, -1, np.int32),
        vb_width_mm=np.zeros(nvb, np.float32), vb_median=np.zeros(nvb, np.float32), issues=issues)
    if not vb_boxes:
        raise LevelsError("no valid vertebra level to extract (" + "; ".join(issues[-3:]) + ")",
                          scan.meta.get("source"))

    vbs, ivds = list(vb_boxes.values()), list(ivd_boxes.values())
    dev = select_device(cfg.device)
    inv = np.linalg.inv(scan.affine)
    A, b0 = inv[:2, :3], inv[:2, 3]  # LPS -> scan (column, row)
    scale = np.array([2.0 / max(I - 1, 1), 2.0 / max(J - 1, 1)])  # -> grid_sample [-1, 1]

    def box_grid(boxes: list[_Box], shape: tuple[int, int]) -> "torch.Tensor":
        """(N*H*W, 2) normalised sampling positions of the boxes' mid planes."""
        import torch

        H, W = shape
        o = np.stack([(A @ bx.centre + b0) * scale - 1 for bx in boxes])  # centre
        si = np.stack([(A @ bx.u) * bx.pixel * scale for bx in boxes])  # per column step
        sj = np.stack([(A @ bx.v) * bx.pixel * scale for bx in boxes])  # per row step
        t = lambda x: torch.as_tensor(x, dtype=torch.float32, device=dev)  # noqa: E731
        ii = torch.arange(W, dtype=torch.float32, device=dev) - (W - 1) / 2
        jj = torch.arange(H, dtype=torch.float32, device=dev) - (H - 1) / 2
        g = t(o)[:, None, None] + ii[None, None, :, None] * t(si)[:, None, None] + jj[None, :, None, None] * t(sj)[:, None, None]
        return g.reshape(-1, 2)

    g2 = cfg.median_grid ** 2
    med_pts = np.concatenate([_median_points(levels[LEVEL_NAMES[bx.index]].corners, bx.centre, n, cfg.median_grid,
                                             cfg.median_inset) for bx in vbs])
    med_grid = torch.as_tensor((med_pts @ A.T + b0) * scale - 1, dtype=torch.float32, device=dev)
    parts = [box_grid(vbs, cfg.vb_shape)] + ([box_grid(ivds, cfg.ivd_shape)] if ivds else []) + [med_grid]
    grid = torch.cat(parts).view(1, 1, -1, 2)

    kmids = np.array([bx.kmid for bx in vbs + ivds])
    k_lo = int(max(0, kmids.min() - half))
    k_hi = int(min(K - 1, kmids.max() + half))
    src = torch.from_numpy(np.ascontiguousarray(scan.array[k_lo:k_hi + 1], dtype=np.float32))[None].to(dev)
    if dev.type == "cpu":
        src = src.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        samp = torch.nn.functional.grid_sample(src, grid, mode="bilinear", padding_mode="zeros",
                                               align_corners=True)[0, :, 0].contiguous()  # (C, P)
    HWv, HWd = Hv * Wv, Hd * Wd
    p_ivd = len(vbs) * HWv
    p_med = p_ivd + len(ivds) * HWd

    def channel(kmid: int, offset: int) -> int | None:
        k = kmid + sgn * offset
        return k - k_lo if 0 <= k < K else None

    # VB intensity probes: the VB's mid slice and its two neighbours (where they exist)
    probes = {}
    for i, bx in enumerate(vbs):
        chs = [c for c in (channel(bx.kmid, o) for o in (-1, 0, 1)) if c is not None]
        probes[LEVEL_NAMES[bx.index]] = samp[chs, p_med + i * g2:p_med + (i + 1) * g2].reshape(-1)

    def norm_median(names: list[str], own: str) -> float:
        use = [m for m in names if m in probes]
        if not use:
            issues.append(f"{own}: no neighbouring VB for intensity normalisation; used its own median")
            use = [own]
        return float(torch.cat([probes[m] for m in use]).median())

    vb_t = torch.empty((nvb, S, HWv), dtype=torch.float32, device=dev)
    ivd_t = torch.empty((nivd, S, HWd), dtype=torch.float32, device=dev)

    def fill(dst: "torch.Tensor", start: int, hw: int, bx: _Box | None, m: float) -> None:
        for t in range(S):
            c = None if bx is None else channel(bx.kmid, t - half)
            if c is None:  # slices the scan does not have are zero (slice-wise padding)
                dst[t].zero_()
            else:
                torch.mul(samp[c, start:start + hw], 1.0 / (m * cfg.clip), out=dst[t])

    done_vb, done_ivd = set(), set()
    for i, bx in enumerate(vbs):
        name, li = LEVEL_NAMES[bx.index], bx.index
        m = norm_median([LEVEL_NAMES[j] for j in (li - 1, li + 1) if 0 <= j < nvb], name)
        out.vb_median[li] = float(probes[name].median())
        if not m > 0:
            issues.append(f"{name}: neighbouring VB median intensity is {m:g}; skipped")
            continue
        done_vb.add(li)
        fill(vb_t[li], i * HWv, HWv, bx, m)
        out.vb_present[li] = True
        out.vb_affine[li] = _box_affine(bx, cfg.vb_shape, n, dk, S)
        out.vb_mid_slice[li] = bx.kmid
        out.vb_width_mm[li] = bx.width
    for i, bx in enumerate(ivds):
        di = bx.index
        up, lo = LEVEL_NAMES[di], LEVEL_NAMES[di + 1]
        m = norm_median([up, lo], up)
        if not m > 0:
            issues.append(f"{DISC_NAMES[di]}: neighbouring VB median intensity is {m:g}; skipped")
            continue
        done_ivd.add(di)
        fill(ivd_t[di], p_ivd + i * HWd, HWd, bx, m)
        out.ivd_present[di] = True
        out.ivd_affine[di] = _box_affine(bx, cfg.ivd_shape, n, dk, S)
        out.ivd_mid_slice[di] = bx.kmid
    for li in set(range(nvb)) - done_vb:
        vb_t[li].zero_()
    for di in set(range(nivd)) - done_ivd:
        ivd_t[di].zero_()
    # SpineNet: intensity / neighbours' median, clipped to [0, clip], divided by clip (the
    # division by clip is folded into fill's factor, so this clamps at 1)
    for t_ in (vb_t, ivd_t):
        t_.clamp_(0, 1.0)
    out.vb = vb_t.view(nvb, S, Hv, Wv).cpu().numpy()
    out.ivd = ivd_t.view(nivd, S, Hd, Wd).cpu().numpy()
    for name in LEVEL_NAMES:
        if name not in levels and not any(s.startswith(name + ":") for s in issues):
            issues.append(f"{name}: level not available")
    out.issues = issues
    return out


# --------------------------------------------------------------------------------------------
# Storage (contract: docs/developer.md "Index / extraction outputs")
# --------------------------------------------------------------------------------------------

def save_volumes(path, sv: ScanVolumes, scan_affine=None, scan_shape=None) -> None:
    from . import atomic

    arrays = dict(
        vb=sv.vb.astype(np.float16), vb_present=sv.vb_present, vb_affine=sv.vb_affine.astype(np.float64),
        ivd=sv.ivd.astype(np.float16), ivd_present=sv.ivd_present, ivd_affine=sv.ivd_affine.astype(np.float64),
        levels=np.array(sv.levels), discs=np.array(sv.discs),
        vb_mid_slice=sv.vb_mid_slice, ivd_mid_slice=sv.ivd_mid_slice,
        vb_width_mm=sv.vb_width_mm, vb_median=sv.vb_median,
    )
    if scan_affine is not None:
        arrays["scan_affine"] = np.asarray(scan_affine, dtype=np.float64)
    if scan_shape is not None:
        arrays["scan_shape"] = np.asarray(scan_shape, dtype=np.int64)
    # a standard .npz (zip of .npy members, np.load reads it), deflate level 1: ~4x faster than
    # np.savez_compressed's default level for about 10% larger files
    import zipfile

    with atomic.atomic_path(path, suffix=".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def load_volumes(path) -> ScanVolumes:
    import zipfile

    from .errors import ManifestError

    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ManifestError(f"cannot read volume file ({type(e).__name__}: truncated or not a SpineSSL .npz)",
                            path) from e
    missing = [k for k in ("vb", "vb_present", "vb_affine", "ivd", "ivd_present", "ivd_affine", "levels")
               if k not in d]
    if missing:
        raise ManifestError(f"not a SpineSSL volume file (no {', '.join(missing)})", path)
    return ScanVolumes(
        vb=d["vb"].astype(np.float32), vb_present=d["vb_present"], vb_affine=d["vb_affine"],
        ivd=d["ivd"].astype(np.float32), ivd_present=d["ivd_present"], ivd_affine=d["ivd_affine"],
        levels=tuple(str(x) for x in d["levels"]), discs=tuple(str(x) for x in d.get("discs", DISC_NAMES)),
        vb_mid_slice=d.get("vb_mid_slice"), ivd_mid_slice=d.get("ivd_mid_slice"),
        vb_width_mm=d.get("vb_width_mm"), vb_median=d.get("vb_median"))


# --------------------------------------------------------------------------------------------
# QC picture
# --------------------------------------------------------------------------------------------

def qc_figure(path, scan, levels: LevelSet, sv: ScanVolumes, title: str = "") -> None:
    """PNG: the scan's mid-sagittal slice with VB outlines, IVD boxes and level names, and a
    montage of every extracted volume's middle slice."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from . import atomic

    mids = sv.vb_mid_slice[sv.vb_present] if sv.vb_present.any() else np.array([scan.shape[0] // 2])
    k = int(np.median(mids))
    fig = Figure(figsize=(14, 6), dpi=80)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(2, 8, width_ratios=[3.2] + [1] * 7, height_ratios=[1, 0.6])
    ax = fig.add_subplot(gs[:, 0])
    img = scan.array[k]
    lo, hi = np.percentile(img, [1, 99.5])
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect=float(scan.spacing[1] / scan.spacing[0]))
    for lev in levels:
        if lev.corners is not None:
            ij = scan.lps_to_index(np.vstack([lev.corners, lev.corners[:1]]))
            ax.plot(ij[:, 0], ij[:, 1], "-", color="#ffcc00", lw=1.2)
        c = scan.lps_to_index(lev.centroid)
        ax.text(c[0], c[1], lev.name, color="#ffcc00", fontsize=9, ha="center", va="center")
    for d, name in enumerate(sv.discs):
        if not sv.ivd_present[d]:
            continue
        H, W = sv.ivd.shape[2:]
        box = np.array([[0, 0, 4, 1], [W - 1, 0, 4, 1], [W - 1, H - 1, 4, 1], [0, H - 1, 4, 1], [0, 0, 4, 1]], float)
        lps = (box @ sv.ivd_affine[d].T)[:, :3]
        ij = scan.lps_to_index(lps)
        ax.plot(ij[:, 0], ij[:, 1], "-", color="#33ccff", lw=1.0)
    ax.set_title(f"{title} slice {k}".strip(), fontsize=9)
    ax.axis("off")
    for i, name in enumerate(sv.levels):
        a = fig.add_subplot(gs[0, 1 + i])
        a.imshow(sv.vb[i, sv.vb.shape[1] // 2], cmap="gray", vmin=0, vmax=1)
        a.set_title(name if sv.vb_present[i] else f"{name} (absent)", fontsize=8)
        a.axis("off")
    for i, name in enumerate(sv.discs):
        a = fig.add_subplot(gs[1, 1 + i])
        a.imshow(sv.ivd[i, sv.ivd.shape[1] // 2], cmap="gray", vmin=0, vmax=1)
        a.set_title(name if sv.ivd_present[i] else f"{name} (absent)", fontsize=8)
        a.axis("off")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.03, wspace=0.08, hspace=0.15)
    with atomic.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


# --------------------------------------------------------------------------------------------
# Level and grade sources for a batch
# --------------------------------------------------------------------------------------------

LEVEL_SOURCES = ("truth", "levels", "markups", "labels", "spinenet", "detect")  # detect[:MODEL]: run the detector
_PATTERNS = {
    "truth": ("{k}.json",),
    "levels": ("{k}.json",),  # saved level sets (spinessl.levels/1), e.g. written by `spine-ssl detect`
    "markups": ("{k}.mrk.json", "{k}.json"),
    "labels": ("{k}_labels.nii.gz", "{k}.nii.gz", "{k}_labels.nii", "{k}.nii", "{k}_labels.nrrd", "{k}.nrrd",
               "{k}_labels.mha", "{k}.mha", "{k}_labels.mhd", "{k}.mhd"),
    "spinenet": ("{k}.json", "{k}_vert_dicts.json"),
}


@dataclass
class LevelSource:
    kind: str
    folder: str
    mapping: str = "spider"  # label maps: preset name or mapping file

    @classmethod
    def parse(cls, spec: str, mapping: str = "spider") -> "LevelSource":
        from .errors import ConfigError

        kind, sep, folder = spec.partition(":")
        if kind == "detect":  # automatic detection; optional model folder (default: bundled model)
            if folder and not os.path.isdir(folder):
                raise ConfigError(f"detector model folder not found: {folder}")
            return cls(kind, folder, mapping)
        if not sep or kind not in LEVEL_SOURCES or not folder:
            raise ConfigError(f"--levels must be KIND:FOLDER with KIND one of {', '.join(LEVEL_SOURCES)}, got {spec!r}")
        if not os.path.isdir(folder):
            raise ConfigError(f"level folder not found: {folder}")
        return cls(kind, folder, mapping)

    def find(self, keys: list[str]) -> str:
        from .errors import LevelsError

        for k in keys:
            if not k:
                continue
            for pat in _PATTERNS[self.kind]:
                p = os.path.join(self.folder, pat.format(k=k))
                if os.path.isfile(p):
                    return p
        raise LevelsError(f"no {self.kind} level file for this scan (looked for "
                          f"{_PATTERNS[self.kind][0].format(k='<scan_key|SeriesInstanceUID|file stem>')})", self.folder)

    def load(self, scan, keys: list[str], device: str = "auto") -> tuple[LevelSet, str]:
        from . import levels as L

        if self.kind == "detect":
            from .detect.infer import detect_levels

            return detect_levels(scan, self.folder or None, device=device, min_confidence=0.5,
                                 where=scan.meta.get("source")), self.folder or "bundled detector"
        path = self.find(keys)
        if self.kind in ("truth", "levels"):
            return L.from_truth_json(path), path
        if self.kind == "markups":
            return L.from_markups(path), path
        if self.kind == "labels":
            return L.from_labelmap(path, scan, L.resolve_label_mapping(self.mapping)), path
        return L.load_spinenet_json(path, scan), path


# SPIDER radiological_gradings.csv: IVD label n is the disc above vertebra n counted from the
# bottom (1 = L5/S1 ... 6 = T12/L1); 0 marks a disc below L5/S1 in transitional anatomy (ignored).
SPIDER_IVD = {1: "L5-S1", 2: "L4-L5", 3: "L3-L4", 4: "L2-L3", 5: "L1-L2", 6: "T12-L1"}


def _spider_grades(rows: list[dict], path) -> dict[str, dict[str, int]]:
    """Patient id -> disc -> Pfirrmann grade (1-5) from SPIDER's radiological_gradings.csv; the
    scans are matched by their file stem's patient prefix (``<patient>_t2.mha``)."""
    from .errors import ManifestError

    out: dict[str, dict[str, int]] = {}
    for r in rows:
        try:
            label, grade = int(r["ivd label"]), int(float(r["pfirrman grade"]))
        except (KeyError, ValueError) as e:
            raise ManifestError(f"SPIDER gradings: bad row {r}", path) from e
        if label in SPIDER_IVD:
            out.setdefault(f"spider:{r['patient']}", {})[SPIDER_IVD[label]] = grade
    return out


def load_grades_csv(path) -> dict[str, dict[str, int]]:
    """scan key (scan_key or SeriesInstanceUID) -> disc -> grade from a CSV with columns
    ``scan_key`` or ``series_uid``, ``disc`` ('L4-L5' or 'L4/L5'), ``grade``; or SPIDER's
    ``radiological_gradings.csv`` (recognised by its columns)."""
    from .errors import ManifestError
    from .index import _read_table

    out: dict[str, dict[str, int]] = {}
    rows = _read_table(path)
    if rows and {"patient", "ivd label", "pfirrman grade"} <= set(rows[0]):
        return _spider_grades(rows, path)
    for r in rows:
        key = r.get("scan_key") or r.get("series_uid") or r.get("series_instance_uid")
        disc = (r.get("disc") or "").upper().replace("/", "-")
        if not key or disc not in DISC_NAMES:
            raise ManifestError(f"grades CSV row needs scan_key/series_uid and a disc in {DISC_NAMES}: {r}", path)
        try:
            out.setdefault(key, {})[disc] = int(float(r["grade"]))
        except (KeyError, ValueError) as e:
            raise ManifestError(f"grades CSV: bad grade in row {r}", path) from e
    return out


# --------------------------------------------------------------------------------------------
# Batch extraction (spine-ssl extract)
# --------------------------------------------------------------------------------------------

SCAN_COLUMNS = ["scan_key", "subject_key", "status", "n_vb", "n_ivd", "missing", "issues", "error"]
VOLUME_COLUMNS = ["volume_id", "scan_key", "subject_key", "family", "timepoint", "interval_days",
                  "field_strength", "level", "kind", "grade", "file", "index", "mid_slice", "width_mm",
                  "levels_source", "sex", "age_bin"]


def _load_truth_family(path) -> str:
    with open(path, encoding="utf-8") as f:
        return str(json.load(f).get("family_id") or "")


def _process(job: dict) -> dict:
    """Extract one scan (runs in a worker process). Never raises for bad input."""
    import traceback

    from .errors import SpineSSLError
    from .privacy import identifiers, redact, redact_error
    from .io import read_dicom_series, read_header, read_scan

    key = job["scan_key"]
    secret: set[str] = set()
    res = {"scan_key": key, "status": "failed", "file": f"scan {key}", "stage": "extract", "error_type": "",
           "message": "", "n_vb": 0, "n_ivd": 0, "issues": []}
    try:
        if job.get("threads"):
            import torch

            torch.set_num_threads(job["threads"])
        cfg = ExtractConfig(**job["config"])
        files = job["files"]
        res["stage"] = "read"
        if job["format"] == "dicom":
            headers = [h for h in (read_header(f) for f in files) if h is not None]
            secret = identifiers(headers)
            scan = read_dicom_series(files, headers=headers, max_oblique_deg=job["max_oblique_deg"],
                                     spacing_tol=job["spacing_tol_mm"])
            keys = [key, scan.meta.get("series_instance_uid", "")]
        else:
            scan = read_scan(files[0], max_oblique_deg=job["max_oblique_deg"])
            stem = os.path.basename(files[0]).split(".")[0]
            keys = [key, stem, "spider:" + stem.split("_")[0]]
        scan.meta["source"] = f"scan {key}"
        res["stage"] = "levels"
        src = LevelSource(**job["levels"])
        levels, level_file = src.load(scan, keys, device=cfg.device)
        res["stage"] = "extract"
        sv = extract_scan(scan, levels, cfg)
        meta = dict(job["row"])
        if src.kind == "truth" and not meta.get("family"):
            fam = _load_truth_family(level_file)
            if fam:
                from .privacy import salted_key

                meta["family"] = salted_key(job["salt"], "family:" + fam, prefix="F", n=10)
        grades: dict[str, int] = {}
        if job.get("grades") == "truth" and src.kind == "truth":
            from .levels import truth_grades

            grades = truth_grades(level_file)
        elif job.get("grades_table") is not None:
            grades = next((job["grades_table"][k] for k in keys if k in job["grades_table"]), {})
        res["stage"] = "write"
        vol_rel = f"volumes/{key}.npz"
        save_volumes(os.path.join(job["cohort"], vol_rel), sv, scan.affine, scan.shape)
        rows = []
        for kind, names, present, mids in (("VB", sv.levels, sv.vb_present, sv.vb_mid_slice),
                                           ("IVD", sv.discs, sv.ivd_present, sv.ivd_mid_slice)):
            for i, name in enumerate(names):
                if not present[i]:
                    continue
                width = float(sv.vb_width_mm[i]) if kind == "VB" else \
                    float(0.5 * (sv.vb_width_mm[i] + sv.vb_width_mm[i + 1]))
                rows.append({"volume_id": f"{key}_{name}", "scan_key": key, "subject_key": meta["subject_key"],
                             "family": meta["family"], "timepoint": meta["timepoint"],
                             "interval_days": meta["interval_days"], "field_strength": meta["field_strength"],
                             "level": name, "kind": kind, "grade": grades.get(name, "") if kind == "IVD" else "",
                             "file": vol_rel, "index": i, "mid_slice": int(mids[i]), "width_mm": round(width, 2),
                             "levels_source": src.kind, "sex": meta.get("sex", ""),
                             "age_bin": meta.get("age_bin", "")})
        issues = [redact(s, secret, words=True) for s in sv.issues]
        if job.get("qc"):
            qc_figure(os.path.join(job["cohort"], "qc", f"{key}.png"), scan, levels, sv, title=f"{key}")
        from . import atomic

        atomic.write_json(os.path.join(job["cohort"], "volumes", f"{key}.json"),
                          {"scan_key": key, "levels_source": src.kind, "rows": rows, "issues": issues,
                           "config": job["config"]})
        res.update(status="ok", n_vb=int(sv.vb_present.sum()), n_ivd=int(sv.ivd_present.sum()), issues=issues)
    except SpineSSLError as e:
        res.update(error_type=type(e).__name__, message=redact_error(e, secret))
        if e.path and os.path.exists(e.path):
            res["file"] = redact(os.path.relpath(e.path, job["root"]) if job.get("root") else e.path, secret)
        if job.get("debug"):
            res["traceback"] = redact(traceback.format_exc(), secret)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # an unexpected failure on one scan must not stop the batch
        res.update(error_type=type(e).__name__, message=redact(f"unexpected error: {e}", secret))
        res["traceback"] = redact(traceback.format_exc(), secret)
    return res


@dataclass
class ExtractSummary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    results: list = field(default_factory=list)
    n_volumes: int = 0


def write_manifests(cohort_dir, all_sel: list[dict], failed: dict[str, str], out_dir) -> tuple[int, list[dict]]:
    """``volumes.csv`` and ``scans.csv`` in ``out_dir`` for the selected index rows ``all_sel``,
    from the scans' sidecars in ``cohort_dir/volumes`` (finished scans of this and earlier runs);
    ``failed``: scan_key -> "ErrorType: message".  Returns (number of volumes, scan rows)."""
    from . import atomic

    c = os.fspath(cohort_dir)
    vol_rows, scan_rows = [], []
    for r in all_sel:
        side = os.path.join(c, "volumes", f"{r['scan_key']}.json")
        row = {"scan_key": r["scan_key"], "subject_key": r["subject_key"], "status": "not extracted",
               "n_vb": 0, "n_ivd": 0, "missing": "", "issues": "", "error": ""}
        if os.path.exists(side) and os.path.exists(side[:-5] + ".npz"):
            with open(side, encoding="utf-8") as f:
                doc = json.load(f)
            vol_rows.extend(doc["rows"])
            have = {v["level"] for v in doc["rows"]}
            row.update(status="ok", n_vb=sum(v["kind"] == "VB" for v in doc["rows"]),
                       n_ivd=sum(v["kind"] == "IVD" for v in doc["rows"]),
                       missing=" ".join(n for n in LEVEL_NAMES + DISC_NAMES if n not in have),
                       issues="; ".join(doc.get("issues", [])))
        elif r["scan_key"] in failed:
            row.update(status="failed", error=failed[r["scan_key"]])
        scan_rows.append(row)
    atomic.write_csv(os.path.join(out_dir, "volumes.csv"), vol_rows, VOLUME_COLUMNS)
    atomic.write_csv(os.path.join(out_dir, "scans.csv"), scan_rows, SCAN_COLUMNS)
    return len(vol_rows), scan_rows


def run_extraction(cohort_dir, levels: LevelSource, config: ExtractConfig | None = None, workers: int = 1,
                   qc: bool = False, grades: str | None = None, root=None, overwrite: bool = False,
                   debug: bool = False, limit: int | None = None, shard=None) -> ExtractSummary:
    """Extract every selected scan of an indexed cohort; resumable, parallel, never stops on a
    bad scan.  ``grades``: 'truth' (from the truth files) or a grades CSV path.  ``shard``
    (``shard.Shard``): only its subjects, manifests into ``C/shards/extract-I-of-N/`` (see
    ``shard.py``)."""
    import concurrent.futures as cf
    import contextlib
    import glob
    import multiprocessing as mp

    from . import atomic, progress
    from .index import ERROR_COLUMNS, locate_sources, read_index
    from .privacy import load_or_create_salt

    cfg = config or ExtractConfig()
    c = os.fspath(cohort_dir)
    man_in, man_out = c, c
    if shard is not None:
        from .shard import shard_dir

        own_index = shard_dir(c, "index", shard)
        man_in = os.fspath(own_index) if (own_index / "index.json").is_file() else c
        man_out = os.fspath(shard_dir(c, "extract", shard))
    meta, rows = read_index(man_in)
    all_sel = [r for r in rows if r["status"] == "selected" and (shard is None or shard.owns(r["subject_key"]))]
    sel = all_sel[:limit] if limit else all_sel
    todo, summary = [], ExtractSummary()
    for r in sel:
        done = os.path.exists(os.path.join(c, "volumes", f"{r['scan_key']}.npz")) and \
            os.path.exists(os.path.join(c, "volumes", f"{r['scan_key']}.json"))
        if done and not overwrite:
            summary.skipped += 1
        else:
            todo.append(r)
            # temporaries of this scan left by a killed run (no other process writes this scan)
            for sub in ("volumes", "qc"):
                for tmp in glob.glob(os.path.join(glob.escape(os.path.join(c, sub)), f".{r['scan_key']}.*")):
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
    grades_table = None
    if grades and grades != "truth":
        grades_table = load_grades_csv(grades)
    if grades is None and levels.kind == "truth":
        grades = "truth"
    sources = locate_sources(c, root, {r["scan_key"] for r in todo}, man_in) if todo else {}
    # worker processes share the cores; in-process (one worker) the caller's torch thread
    # setting is used and left as it was
    n_threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if workers > 1 else None
    icfg = meta.get("config", {})
    salt = load_or_create_salt(c)
    jobs, missing = [], []
    for r in todo:
        files = sources.get(r["scan_key"])
        if not files:
            missing.append({"scan_key": r["scan_key"], "status": "failed", "file": f"scan {r['scan_key']}",
                            "stage": "read", "error_type": "InputError",
                            "message": "source files of this scan not found under the index root", "issues": []})
            continue
        jobs.append({"scan_key": r["scan_key"], "files": files, "format": r["format"], "cohort": c,
                     "levels": dataclasses.asdict(levels), "config": dataclasses.asdict(cfg),
                     "grades": grades, "grades_table": grades_table, "qc": qc, "debug": debug,
                     "threads": n_threads, "salt": salt, "root": str(root or meta["root"]), "max_oblique_deg": float(icfg.get("max_oblique_deg", 30.0)),
                     "spacing_tol_mm": float(icfg.get("spacing_tol_mm", 0.05)),
                     "row": {k: r.get(k, "") for k in ("subject_key", "family", "timepoint", "interval_days",
                                                        "field_strength", "sex", "age_bin")}})
    results = list(missing)
    with progress.Progress(len(jobs), desc="extracting", unit="scan") as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(_process(job))
                bar.update(1)
        else:
            if "forkserver" in mp.get_all_start_methods():
                # workers fork from a server that imported torch once and never ran a torch op
                # (fork-safe for OpenMP and CUDA), instead of each spawned worker importing it
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(["SpineSSLLib.extract", "SpineSSLLib.io", "torch", "pydicom"])
            else:
                ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futs = [pool.submit(_process, j) for j in jobs]
                try:
                    for f in cf.as_completed(futs):
                        results.append(f.result())
                        bar.update(1)
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    for res in results:
        if res["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
    summary.results = results
    # manifest of every extracted volume (finished scans from this and earlier runs)
    failures = sorted(({"file": x["file"], "stage": x["stage"], "error_type": x["error_type"], "message": x["message"]}
                       for x in results if x["status"] != "ok"),
                      key=lambda e: (e["file"], e["stage"], e["error_type"], e["message"]))
    failed = {x["scan_key"]: f"{x['error_type']}: {x['message']}" for x in results if x["status"] != "ok"}
    summary.n_volumes, _ = write_manifests(c, all_sel, failed, man_out)
    if shard is not None:  # the shard's failures only; `spine-ssl merge` adds the index's rows
        from .privacy import salt_id

        atomic.write_csv(os.path.join(man_out, "errors.csv"), failures, ERROR_COLUMNS)
        atomic.write_json(os.path.join(man_out, "shard.json"), {"shard": str(shard), "salt_id": salt_id(salt),
                                                               "config": dataclasses.asdict(cfg)})
        return summary
    # errors table (contract: C/errors.csv): the index's rows are kept, extraction failures of
    # this run replace those of earlier runs (scans that failed before are retried each run)
    err_path = os.path.join(c, "errors.csv")
    kept = []
    if os.path.exists(err_path):
        with open(err_path, newline="", encoding="utf-8") as f:
            kept = [r for r in csv.DictReader(f) if r.get("stage") == "index"]
    atomic.write_csv(err_path, kept + failures, ERROR_COLUMNS)
    return summary
