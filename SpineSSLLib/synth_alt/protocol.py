"""Scanner, protocol and DICOM conventions of one held-out series (numbers only).

Different on purpose from the main generator: three fictional vendors with their own series
descriptions, file naming and pixel storage (12-bit, 16-bit, or floating point with a rescale
slope); a tissue contrast model (proton density, T1, T2 at the protocol's TE/TR, field strength)
with fat suppression in some series; a field of view placed on the anatomy (top edge inside a
vertebra from T9 to L2, bottom edge from S2 to below the coccyx), rectangular matrices,
zero-filled reconstruction (0.4-1.2 mm pixels), 3-6 mm slices; image axes in five orientation
conventions (rows and columns swapped, mirrored, upside down); k-space truncation, apodisation,
phase ghosts; Rician or Gaussian noise; a multi-element posterior coil array as bias field.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .config import AltConfig
from .subject import Subject, rng

VENDORS = (
    dict(name="Holdout Medical", models={1.0: "HM Lyra 1.0T", 1.5: "HM Aurora 1.5T", 3.0: "HM Zenith 3T"},
         desc=("t2_tse_sag_384", "t2_tse_sag", "t2_sag"), desc_fs="t2_tse_sag_fs", storage="u12",
         naming="counter", software="syngo-like VH11"),
    dict(name="Northwind MR Systems", models={1.0: "NW Open 1.0", 1.5: "NW Signa-like 1.5", 3.0: "NW Discovery-like 3.0"},
         desc=("Sag T2 FRFSE", "SAG T2 FSE", "Sag T2"), desc_fs="Sag T2 FSE FS", storage="u16",
         naming="plain", software="NW 27.0"),
    dict(name="Meridian Imaging", models={1.0: "Meridian Panorama 1.0T", 1.5: "Meridian Ingenia-like 1.5T",
                                          3.0: "Meridian Achieva-like 3.0T"},
         desc=("T2W_TSE_SAG", "SAG T2W TSE", "sT2W_TSE"), desc_fs="T2W_TSE_SAG_SPAIR", storage="float",
         naming="uid", software="5.9.1"),
)
NEUTRAL_DESC = ("LSPINE SAG", "sag_fse_lumbar")  # no "T2" in the name: the index decides by echo time

# Orientation conventions: (column-index direction, row-index direction) in anatomical terms.
# A/P/S/I are LPS unit vectors: anterior = -y, posterior = +y, superior = +z, inferior = -z.
_DIR = {"A": (0, -1, 0), "P": (0, 1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
CONVENTIONS = (("P", "I"), ("A", "I"), ("I", "P"), ("S", "A"), ("P", "S"))
CONVENTION_P = (0.5, 0.2, 0.12, 0.08, 0.1)
TOP_VERTEBRA_P = {"T9": 0.14, "T10": 0.2, "T11": 0.24, "T12": 0.2, "L1": 0.15, "L2": 0.07}


@dataclass
class Protocol:
    vendor: int
    field_strength: float
    te: float
    tr: float
    etl: int
    fat_sat: bool
    fs_residual: float  # share of fat signal left by fat suppression
    description: str
    spacing: float  # target reconstructed in-plane pixel (mm)
    zero_fill: float  # recon / acquired matrix
    phase_frac: float  # phase resolution relative to frequency resolution
    phase_axis: int  # 0: phase encoding along image rows (j), 1: along columns (i)
    apod: str  # "none" | "hamming" | "fermi"
    apod_strength: float
    ghost: float  # phase error amplitude (rad) of the ghosting lines; 0 = none
    noise: str  # "rician" | "gaussian"
    snr: float  # CSF signal / noise sd at the acquired voxel
    coils: int
    coil_spacing: float
    coil_depth: float
    prescan_norm: float  # 0: raw coil profile ... 1: flattened
    thickness: float
    gap: float  # spacing between slices / thickness
    coverage: float  # lateral mm covered by the stack
    lateral_offset: float
    convention: int
    stored_reversed: bool
    top_vertebra: str
    top_frac: float  # where the FOV's top edge cuts the top vertebra (0 bottom ... 1 top)
    bottom_s: float  # arc length below the S1 endplate where the FOV ends (mm, positive)
    aspect: float  # AP FOV / SI FOV
    ap_frac: float  # where the spine sits between the anterior and posterior FOV edge
    obliquity: np.ndarray  # (3,) degrees about x, y, z
    body_rot: np.ndarray  # (3,) degrees: patient rotation on the table
    body_shift: np.ndarray  # (3,) mm
    intensity: float  # stored value of CSF
    position: str  # PatientPosition
    naming: str
    storage: str
    seed: int  # per-series random stream for the renderer
    tissue_jitter: dict = field(default_factory=dict)


def _pick(r, options, p=None):
    p = None if p is None else np.asarray(p, float) / np.sum(p)
    return options[int(r.choice(len(options), p=p))]


def draw(cfg: AltConfig, s: Subject, k: int) -> Protocol:
    r = rng(cfg.seed, 9_000_000 + s.index, k)
    vendor = int(r.integers(0, len(VENDORS)))
    fs = _pick(r, (1.0, 1.5, 3.0), (0.15, 0.6, 0.25) if k == 0 else (0.0, 0.45, 0.55))
    fat_sat = bool(r.random() < cfg.fat_sat_fraction)
    v = VENDORS[vendor]
    if r.random() < 0.08:
        desc = _pick(r, NEUTRAL_DESC)
    else:
        desc = v["desc_fs"] if fat_sat else _pick(r, v["desc"])
    thickness = float(_pick(r, (3.0, 3.5, 4.0, 4.5, 5.0, 6.0), (0.2, 0.15, 0.3, 0.12, 0.13, 0.1)))
    top = _pick(r, tuple(TOP_VERTEBRA_P), tuple(TOP_VERTEBRA_P.values()))
    base_snr = {1.0: 16.0, 1.5: 24.0, 3.0: 38.0}[fs]
    return Protocol(
        vendor=vendor, field_strength=fs, te=float(r.uniform(80, 125)), tr=float(r.uniform(2500, 5200)),
        etl=int(r.integers(12, 32)), fat_sat=fat_sat, fs_residual=float(r.uniform(0.04, 0.2)), description=desc,
        spacing=float(np.exp(r.uniform(np.log(0.4), np.log(1.2)))),
        zero_fill=float(_pick(r, (1.0, 1.25, 1.5, 2.0), (0.25, 0.2, 0.25, 0.3))),
        phase_frac=float(r.uniform(0.65, 1.0)), phase_axis=int(r.integers(0, 2)),
        apod=_pick(r, ("none", "hamming", "fermi"), (0.35, 0.35, 0.3)), apod_strength=float(r.uniform(0.3, 1.0)),
        ghost=float(r.uniform(0.05, 0.25)) if r.random() < 0.12 else 0.0,
        noise="rician" if r.random() < 0.7 else "gaussian", snr=float(base_snr * r.uniform(0.7, 1.4)),
        coils=int(r.integers(2, 5)), coil_spacing=float(r.uniform(60, 110)), coil_depth=float(r.uniform(80, 140)),
        prescan_norm=float(r.uniform(0.0, 0.85)),
        thickness=thickness, gap=float(_pick(r, (1.0, 1.1, 1.2, 1.3), (0.2, 0.45, 0.25, 0.1))),
        coverage=float(r.uniform(52, 100)), lateral_offset=float(r.normal(0, 3.0)),
        convention=int(r.choice(len(CONVENTIONS), p=CONVENTION_P)), stored_reversed=bool(r.random() < 0.5),
        top_vertebra=top, top_frac=float(r.uniform(0.1, 0.9)),
        bottom_s=float(r.uniform(35, s.sacrum["length"] + 55)),
        aspect=float(r.uniform(0.62, 1.0)), ap_frac=float(r.uniform(0.45, 0.63)),
        obliquity=r.uniform(-4, 4, 3), body_rot=np.array([r.normal(0, 3), r.normal(0, 2), r.normal(0, 3)]),
        body_shift=r.normal(0, [5.0, 5.0, 10.0]), intensity=float(r.uniform(0.5, 0.9)),
        position="HFS" if r.random() < 0.8 else "FFS", naming=v["naming"], storage=v["storage"],
        seed=int(r.integers(0, 2**31 - 1)),
        tissue_jitter={t: float(r.uniform(0.88, 1.12)) for t in ("fat", "muscle", "csf", "marrow", "disc")},
    )


def rot(deg) -> np.ndarray:
    """Rotation about x, then y, then z (degrees)."""
    out = np.eye(3)
    for ax, d in enumerate(deg):
        a = np.deg2rad(float(d))
        c, s_ = np.cos(a), np.sin(a)
        R = np.eye(3)
        i, j = [(1, 2), (0, 2), (0, 1)][ax]
        R[i, i], R[i, j], R[j, i], R[j, j] = c, -s_, s_, c
        out = R @ out
    return out


def image_axes(p: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """Unit LPS directions of the column index (i) and row index (j), obliquity applied."""
    ci, cj = CONVENTIONS[p.convention]
    R = rot(p.obliquity)
    return R @ np.array(_DIR[ci], float), R @ np.array(_DIR[cj], float)


def file_names(p: Protocol, K: int, series_uid: str) -> list[str]:
    if p.naming == "counter":
        return [f"IMG{k + 1:05d}" for k in range(K)]
    if p.naming == "plain":
        return [f"{k + 1}.dcm" for k in range(K)]
    h = hashlib.sha256(series_uid.encode()).hexdigest()[:8].upper()
    return [f"MR{h}_{k + 1:04d}.DCM" for k in range(K)]


TISSUES = {
    # name: (proton density, T1 ms at 1.5 T, T2 ms); fat's T2 is its apparent value in a TSE train
    "fat": (1.0, 290.0, 125.0), "muscle": (0.75, 1000.0, 42.0), "csf": (1.0, 4000.0, 1800.0),
    "cord": (0.78, 1000.0, 85.0), "marrow_water": (0.8, 950.0, 55.0), "cortex": (0.06, 1000.0, 8.0),
    "ligament": (0.25, 800.0, 14.0), "annulus": (0.7, 1000.0, 42.0), "bowel": (0.9, 2000.0, 300.0),
    "bowel_wall": (0.8, 1000.0, 60.0), "liver": (0.8, 600.0, 45.0), "urine": (1.0, 3500.0, 1500.0),
    "vessel": (0.06, 1500.0, 200.0), "slow_vessel": (0.6, 1500.0, 180.0), "skin": (0.7, 800.0, 30.0),
    "nerve": (0.75, 1000.0, 70.0), "joint": (0.95, 3000.0, 600.0), "oedema": (0.9, 1200.0, 110.0),
}


def signal(p: Protocol, pd: float, t1: float, t2, fat: bool = False):
    """Fast-spin-echo signal PD (1 - exp(-TR/T1)) exp(-TE/T2), T1 lengthening with field."""
    t1 = t1 * (p.field_strength / 1.5) ** 0.3
    s = pd * (1 - np.exp(-p.tr / t1)) * np.exp(-p.te / np.asarray(t2, float))
    if fat and p.fat_sat:
        s = s * p.fs_residual
    return s


def tissue_signals(p: Protocol) -> dict[str, float]:
    out = {}
    for name, (pd, t1, t2) in TISSUES.items():
        out[name] = float(signal(p, pd, t1, t2, fat=(name == "fat")))
    j = p.tissue_jitter
    for t in ("fat", "muscle", "csf"):
        out[t] *= j[t]
    out["marrow_water"] *= j["marrow"]
    out["air"] = 0.0
    return out
