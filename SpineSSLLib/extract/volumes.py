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
layer calls it on a volume node's array/affine); ``files.save_volumes``/``files.load_volumes`` use
the ``volumes/<scan_key>.npz`` contract of docs/developer.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import DISC_NAMES, LEVEL_NAMES
from ..levels import LevelSet, prepared_levels

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
        from ..errors import ConfigError

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
    from ..errors import GeometryError

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

    from ..errors import LevelsError

    cfg = config or ExtractConfig()
    S, half = cfg.n_slices, cfg.n_slices // 2
    K, J, I = scan.shape
    issues = list(levels.issues)
    levels = prepared_levels(scan, levels)
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
    from ..device import select_device

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
