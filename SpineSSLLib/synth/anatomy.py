"""Subjects, families and time: persistent-but-ageing identity and disc degeneration.

Everything here is parameters (numbers), no pixels; ``render`` turns a ``VisitAnatomy`` and an
``Acquisition`` into a volume.  Randomness comes from ``numpy.random.SeedSequence`` keyed by
(cohort seed, family index, purpose), so a subject does not depend on how many subjects come
after it and the same seed gives the same cohort.

Body frame (mm): x towards the patient's left, y posterior, z superior (LPS axes); the patient's
position in the scanner maps the body frame to LPS with a small rotation and a translation.

Identity ("fingerprint") per vertebra: height, AP depth, width, wedge, superior/inferior
endplate concavity and its centre, endplate waviness (amplitude, phase), corner rounding,
Schmorl's nodes, osteophytes, marrow base signal, marrow texture (random Fourier components),
fat islands, haemangiomas.  Ageing over ``t`` years: height loss, deeper concavities, growing
osteophytes/Schmorl's nodes, new fat islands and lesions, lesions grow, a share
``marrow_change * t / 10`` of the marrow texture energy renewed.

Degeneration: a hidden score per disc = subject propensity (twins correlated) + disc-specific
term + age effect + individual progression.  Per-disc thresholds chosen so that the baseline
cohort reproduces SPIDER's grade frequencies map the score to an "appearance" value ``a`` on a
common scale (grade g spans g-1 <= a < g); rendering depends on ``a`` (nucleus T2 signal,
height, nucleus/annulus blur, clefts, fissures, endplate signal change) with per-disc spread,
and the label is ``floor(a) + 1`` moved to an adjacent grade for ``rater_noise`` of the discs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from .. import DISC_NAMES, LEVEL_NAMES
from .config import SPIDER_GRADE_COUNTS, SPIDER_T2_ACQUISITIONS, SynthConfig

# Mean vertebral-body height / AP depth (mm) and disc height (mm), T12..S1 / T12-L1..L5-S1.
VB_HEIGHT = np.array([23.0, 24.5, 25.5, 26.5, 26.5, 25.5, 24.0])
VB_DEPTH = np.array([30.0, 32.0, 33.5, 35.0, 36.0, 36.0, 34.0])
DISC_HEIGHT = np.array([6.5, 8.0, 9.0, 10.0, 11.0, 10.5])
# Sagittal tilt (deg) of each vertebra's superior axis, anterior positive, T12..S1.
LORDOSIS_TILT = np.array([-9.0, -6.0, -2.0, 3.0, 9.0, 17.0, 32.0])

# Score model: s = W_SUBJ * subject + W_DISC * disc + AGE_COEF * (age - AGE_REF) / 10 + progression
W_SUBJ, W_DISC, AGE_COEF, AGE_REF, PROG_SD = 0.65, 0.6, 0.45, 52.5, 0.35



def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, key)]))


def score_thresholds(cfg: SynthConfig) -> dict[str, tuple[float, float, float]]:
    """Per disc: score thresholds between grades 1|2, 2|3, 3|4 matching SPIDER's frequencies in
    the baseline population (normal approximation of the baseline score distribution)."""
    lo, hi = cfg.baseline_age
    age_var = ((hi - lo) ** 2 / 12.0) / 100.0
    mean = AGE_COEF * ((lo + hi) / 2 - AGE_REF) / 10
    sd = float(np.sqrt(W_SUBJ**2 + W_DISC**2 + AGE_COEF**2 * age_var))
    nd = NormalDist(mean, sd)
    out = {}
    for disc in DISC_NAMES:
        counts = np.array(SPIDER_GRADE_COUNTS[disc], dtype=float)
        cum = np.cumsum(counts)[:-1] / counts.sum()
        out[disc] = tuple(float(nd.inv_cdf(float(c))) for c in cum)
    return out


def appearance(score: float, thr: tuple[float, float, float]) -> float:
    """Map a score to the common appearance scale: thresholds -> 1, 2, 3, linear in between and
    extrapolated with the neighbouring segment's slope (grade g spans g-1 <= a < g)."""
    t = np.array(thr)
    if score < t[0]:
        return float(1.0 + (score - t[0]) / (t[1] - t[0]))
    if score >= t[2]:
        return float(3.0 + (score - t[2]) / (t[2] - t[1]))
    return float(np.interp(score, t, [1.0, 2.0, 3.0]))


@dataclass
class Lesion:
    level: int
    pos: np.ndarray  # (u, v, w) as fractions of (depth/2, height/2, width/2)
    radius: float  # mm at onset
    growth: float  # relative growth per decade
    onset: float  # years after baseline it becomes visible (<= 0: present at baseline)
    contrast: float  # added T2 signal (relative to marrow)


@dataclass
class SubjectAnatomy:
    """Persistent parameters of one subject (values at baseline)."""

    subject_id: str
    family_id: str
    index: int
    sex: str
    baseline_age: float
    weight: float
    graded: bool
    n_visits: int
    intervals_years: list[float]
    vb: dict[str, np.ndarray]  # per parameter, (7,) values T12..S1
    texture_k: np.ndarray  # (7, n, 3) wave vectors (rad/mm) in VB-local (u, v, w)
    texture_phase: np.ndarray  # (7, n)
    texture_amp: np.ndarray  # (7, n)
    renew_k: np.ndarray
    renew_phase: np.ndarray
    renew_amp: np.ndarray
    fat: list[tuple[int, np.ndarray, float, float, float]]  # (level, pos frac, radius, amp, onset)
    lesions: list[Lesion]
    schmorl: list[tuple[int, int, float, float, float, float]]  # (level, 0 sup/1 inf, u frac, w frac, radius, depth)
    lordosis_scale: float
    scoliosis_amp: float
    scoliosis_phase: float
    disc_height_scale: float
    disc_height_rel: np.ndarray  # (6,) persistent per-disc height factor
    nucleus_rel: np.ndarray  # (6,) persistent per-disc nucleus signal factor
    canal_width: float
    fat_thickness: float
    propensity: float
    disc_term: np.ndarray  # (6,)
    progression: np.ndarray  # (6,) score increase per decade beyond the age effect
    rater_flip: np.ndarray  # (n_visits, 6) in {-1, 0, +1}
    disc_noise: np.ndarray  # (n_visits, 6, 2) per-visit appearance noise (nucleus, height)
    cleft: np.ndarray  # (6,) intranuclear cleft strength
    fissure: np.ndarray  # (6,) annular fissure propensity


@dataclass
class VisitAnatomy:
    """Parameters of one subject at one visit (ageing applied)."""

    subject: SubjectAnatomy
    visit: int
    years: float  # since baseline
    age: float
    vb: dict[str, np.ndarray]
    texture_mix: float  # share of renewed marrow texture energy
    lesions: list[tuple[int, np.ndarray, float, float]]  # (level, pos frac, radius mm, contrast)
    fat: list[tuple[int, np.ndarray, float, float]]
    schmorl: list[tuple[int, int, float, float, float, float]]
    scores: np.ndarray  # (6,) hidden continuous degeneration scores
    appearance: np.ndarray  # (6,) common-scale appearance values
    grades: list[int | None]  # rater's grade per disc (None if ungraded)
    true_grades: list[int]
    disc_height: np.ndarray  # (6,) mm
    nucleus_signal: np.ndarray  # (6,) nucleus T2 signal relative to marrow
    blur: np.ndarray  # (6,) nucleus/annulus boundary width mm
    endplate_change: np.ndarray  # (6,) signal change in neighbouring marrow
    osteophyte: np.ndarray  # (7,) mm
    lordosis_deg_delta: float
    weight: float

    def fingerprint(self) -> dict:
        """Hidden identity parameters at this visit (for calibration only)."""
        per_level = {}
        for i, name in enumerate(LEVEL_NAMES):
            per_level[name] = {k: round(float(v[i]), 4) for k, v in self.vb.items()}
            per_level[name]["osteophyte"] = round(float(self.osteophyte[i]), 4)
            per_level[name]["n_lesions"] = sum(1 for l in self.lesions if l[0] == i)
            per_level[name]["n_fat"] = sum(1 for f in self.fat if f[0] == i)
            per_level[name]["n_schmorl"] = sum(1 for s in self.schmorl if s[0] == i)
        return {
            "levels": per_level,
            "lordosis_scale": round(float(self.subject.lordosis_scale), 4),
            "scoliosis_amp": round(float(self.subject.scoliosis_amp), 4),
            "disc_height_scale": round(float(self.subject.disc_height_scale), 4),
            "texture_mix": round(float(self.texture_mix), 4),
        }


FINGERPRINT_KEYS = ("height", "depth", "width", "wedge", "conc_sup", "conc_inf", "conc_centre",
                    "wave_amp", "wave_phase", "corner", "marrow", "osteophyte")


def fingerprint_vector(fp: dict, level: str) -> np.ndarray:
    """Numeric identity vector of one vertebra from a truth JSON ``fingerprint`` entry."""
    d = fp["levels"][level]
    v = [d[k] for k in FINGERPRINT_KEYS]
    v += [np.cos(d["wave_phase"]), np.sin(d["wave_phase"])]
    return np.array(v, dtype=float)


def _texture(rng, n):
    # wavelengths 3..14 mm, isotropic directions, amplitude ~ 1/sqrt(n)
    lam = rng.uniform(3.0, 14.0, (7, n))
    d = rng.normal(size=(7, n, 3))
    d[..., 2] *= 0.6  # slightly elongated across slices (trabecular orientation)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    k = d * (2 * np.pi / lam)[..., None]
    return k, rng.uniform(0, 2 * np.pi, (7, n)), rng.rayleigh(1.0, (7, n)) / np.sqrt(n)


def make_family(cfg: SynthConfig, family_index: int, first_subject: int, size: int) -> list[SubjectAnatomy]:
    """Subjects of one family (1, or 2 for twins) with correlated anatomy and degeneration."""
    fam = _rng(cfg.seed, family_index, 0)
    rho = float(fam.uniform(0.45, 0.75)) if size > 1 else 0.0
    shared = fam.normal(size=64)
    out = []
    for m in range(size):
        idx = first_subject + m
        r = _rng(cfg.seed, family_index, 1 + m)
        z = np.sqrt(rho) * shared + np.sqrt(1 - rho) * r.normal(size=64)
        out.append(_make_subject(cfg, idx, family_index, z, r))
    return out


def _make_subject(cfg: SynthConfig, idx: int, family_index: int, z: np.ndarray, r: np.random.Generator) -> SubjectAnatomy:
    nv = 1
    if r.random() < cfg.followup_fraction:
        nv = 3 if r.random() < cfg.three_visit_fraction else 2
    lo, hi = cfg.interval_years
    intervals = [0.0]
    for _ in range(nv - 1):
        gap = r.uniform(lo, hi) if len(intervals) == 1 else r.uniform(1.5, 4.0)
        intervals.append(intervals[-1] + gap)
    sex = "F" if r.random() < cfg.female_fraction else "M"
    size = (1.0 if sex == "F" else 1.08) * (1 + 0.05 * z[0])
    lv = lambda sd, j: sd * (0.6 * z[j] + 0.8 * r.normal(size=7))  # family + individual, per level
    vb = {
        "height": VB_HEIGHT * size * (1 + lv(0.045, 1)),
        "depth": VB_DEPTH * size * (1 + lv(0.06, 2)),
        "width": VB_DEPTH * 1.4 * size * (1 + lv(0.06, 3)),
        "wedge": np.array([-1.0, -0.5, 0.0, 0.3, 0.8, 2.0, 0.0]) + lv(1.3, 4),
        "conc_sup": np.clip(1.2 + lv(0.55, 5), 0.2, 3.5),
        "conc_inf": np.clip(1.6 + lv(0.6, 6), 0.2, 4.0),
        "conc_centre": np.clip(lv(0.15, 7), -0.4, 0.4),
        "wave_amp": np.clip(0.5 + lv(0.25, 8), 0.05, 1.3),
        "wave_phase": r.uniform(0, 2 * np.pi, 7),
        "corner": np.clip(2.2 + lv(0.6, 9), 0.8, 4.0),
        "marrow": np.clip(1.0 + 0.08 * z[10] + 0.06 * r.normal(size=7), 0.7, 1.3),
    }
    vb["conc_sup"][6] *= 0.3  # the sacral plateau is flat
    tk, tp, ta = _texture(r, 18)
    rk, rp, ra = _texture(r, 18)
    fat = []
    for lvl in range(7):
        for _ in range(r.poisson(1.2)):
            onset = -1.0 if r.random() < 0.7 else r.uniform(0, 12)
            fat.append((lvl, r.uniform(-0.7, 0.7, 3), float(r.uniform(2.5, 7.0)), float(r.uniform(0.12, 0.35)), onset))
    lesions = []
    for _ in range(r.poisson(cfg.lesion_rate)):
        onset = -1.0 if r.random() < 0.65 else float(r.uniform(0, 12))
        lesions.append(Lesion(int(r.integers(0, 7)), r.uniform(-0.55, 0.55, 3), float(r.uniform(2.0, 6.5)),
                              float(r.uniform(0.0, 0.5)), onset, float(r.uniform(0.5, 1.0))))
    schmorl = []
    for lvl in range(7):
        for side in (0, 1):
            if lvl == 6 and side == 1:
                continue
            if r.random() < 0.18:
                onset = -1.0 if r.random() < 0.6 else float(r.uniform(0, 12))
                schmorl.append((lvl, side, float(r.uniform(-0.45, 0.45)), float(r.uniform(-0.4, 0.4)),
                                float(r.uniform(2.0, 4.5)), onset))
    rater = r.random((nv, 6))
    flip = np.where(rater < cfg.rater_noise, np.where(r.random((nv, 6)) < 0.5, -1, 1), 0)
    return SubjectAnatomy(
        subject_id=f"S{idx + 1:05d}", family_id=f"F{family_index + 1:05d}", index=idx, sex=sex,
        baseline_age=float(r.uniform(*cfg.baseline_age)), weight=float(np.clip(68 + 12 * z[11] + (8 if sex == "M" else 0), 42, 130)),
        graded=bool(r.random() < cfg.graded_fraction), n_visits=nv, intervals_years=intervals,
        vb=vb, texture_k=tk, texture_phase=tp, texture_amp=ta, renew_k=rk, renew_phase=rp, renew_amp=ra,
        fat=fat, lesions=lesions, schmorl=schmorl,
        lordosis_scale=float(np.clip(1 + 0.2 * z[12], 0.5, 1.6)),
        scoliosis_amp=float(abs(2.0 * z[13])), scoliosis_phase=float(r.uniform(0, 2 * np.pi)),
        disc_height_scale=float(np.clip(1 + 0.08 * z[14], 0.7, 1.3)),
        disc_height_rel=1 + cfg.height_noise * r.normal(size=6),
        nucleus_rel=1 + cfg.nucleus_noise * r.normal(size=6),
        canal_width=float(np.clip(15 + 1.5 * z[15], 10, 20)),
        fat_thickness=float(np.clip(18 + 7 * z[16], 5, 45)),
        propensity=float(z[17]), disc_term=r.normal(size=6),
        progression=np.abs(r.normal(0, PROG_SD, 6)),
        rater_flip=flip, disc_noise=r.normal(size=(nv, 6, 2)),
        cleft=r.uniform(0, 1, 6), fissure=r.uniform(0, 1, 6),
    )


def visit_anatomy(cfg: SynthConfig, s: SubjectAnatomy, visit: int, thresholds) -> VisitAnatomy:
    t = s.intervals_years[visit]
    age = s.baseline_age + t
    r = _rng(cfg.seed, 10_000_000 + s.index, visit)
    dec = t / 10.0
    vb = {k: v.copy() for k, v in s.vb.items()}
    vb["height"] = vb["height"] * (1 - 0.012 * dec * (1 + 0.5 * r.random(7)))
    vb["conc_sup"] = vb["conc_sup"] + 0.15 * dec
    vb["conc_inf"] = vb["conc_inf"] + 0.2 * dec
    vb["marrow"] = vb["marrow"] * (1 + 0.06 * dec)  # fatty conversion with age
    vb["wave_amp"] = vb["wave_amp"] * (1 + 0.1 * dec * r.random(7))
    lesions = [(l.level, l.pos, l.radius * (1 + l.growth * max(0.0, t - max(l.onset, 0)) / 10), l.contrast)
               for l in s.lesions if l.onset <= t]
    fat = [(lvl, pos, rad * (1 + 0.25 * dec), amp, ) for lvl, pos, rad, amp, onset in s.fat if onset <= t]
    schmorl = [(lvl, side, u, w, rad * (1 + 0.1 * dec), 2.0 + 0.3 * dec) for lvl, side, u, w, rad, onset in s.schmorl if onset <= t]
    base_age = (age - AGE_REF) / 10
    scores = (W_SUBJ * s.propensity + W_DISC * s.disc_term + AGE_COEF * base_age + s.progression * dec)
    app = np.array([appearance(float(sc), thresholds[d]) for sc, d in zip(scores, DISC_NAMES)])
    true_grades = [int(np.clip(np.floor(a) + 1, 1, 4)) for a in app]
    grades = None
    if s.graded:
        grades = [int(np.clip(g + f, 1, 4)) for g, f in zip(true_grades, s.rater_flip[visit])]
    a = np.clip(app, -1.0, 5.0)
    noise = s.disc_noise[visit]
    nucleus = (0.35 + 1.55 / (1 + np.exp(1.5 * (a - 2.0)))) * s.nucleus_rel * (1 + cfg.nucleus_noise * noise[:, 0])
    hfac = 1.0 - 0.42 / (1 + np.exp(-1.4 * (a - 2.9)))
    height = DISC_HEIGHT * s.disc_height_scale * s.disc_height_rel * hfac * (1 + cfg.height_noise * noise[:, 1])
    blur = 0.6 + 0.9 * np.clip(a - 0.5, 0, 3.5)
    ep = np.clip((a - 2.3) * 0.25, 0, 0.6) * (r.random(6) < 0.6)
    osteo = np.clip(np.maximum(0, (age - 45) / 10) * (0.8 + 0.5 * s.propensity) + 0.3 * r.normal(size=7), 0, 6)
    return VisitAnatomy(
        subject=s, visit=visit, years=t, age=age, vb=vb, texture_mix=cfg.marrow_change * min(1.0, dec),
        lesions=lesions, fat=fat, schmorl=schmorl, scores=scores, appearance=app,
        grades=grades if grades is not None else [None] * 6, true_grades=true_grades,
        disc_height=np.clip(height, 1.5, 16), nucleus_signal=np.clip(nucleus, 0.15, 2.6), blur=blur,
        endplate_change=ep, osteophyte=osteo,
        lordosis_deg_delta=float(r.normal(0, cfg.posture_deg)) if visit > 0 else 0.0,
        weight=float(s.weight * (1 + 0.03 * dec * r.normal())),
    )


@dataclass
class Acquisition:
    """Scan-level nuisance and geometry of one series."""

    field_strength: float
    spacing: float  # in-plane mm
    thickness: float
    between: float
    n_slices: int
    matrix: int
    rotation: np.ndarray  # 3x3 body -> LPS (patient positioning x slice-stack obliquity)
    stack_rotation: np.ndarray  # 3x3 obliquity of the slice stack
    body_shift: np.ndarray  # (3,) mm, patient position relative to the stack centre
    flipped: bool
    naming: int  # 0 IMxxxx.dcm, 1 no extension, 2 SOP-UID.dcm
    intensity_scale: float
    noise_sd: float  # relative to marrow signal
    tissue_gain: dict = field(default_factory=dict)
    bias: np.ndarray = field(default_factory=lambda: np.zeros(4))
    echo_time: float = 100.0
    repetition_time: float = 3500.0


def axis_rotation(ax: int, deg: float) -> np.ndarray:
    """3x3 rotation by ``deg`` degrees about coordinate axis ``ax`` (0, 1, 2)."""
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    R = np.eye(3)
    i, j = [(1, 2), (0, 2), (0, 1)][ax]
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def acquisition(cfg: SynthConfig, s: SubjectAnatomy, visit: int) -> Acquisition:
    r = _rng(cfg.seed, 20_000_000 + s.index, visit)
    acq = SPIDER_T2_ACQUISITIONS
    w = np.array([a[4] for a in acq], dtype=float)
    spider = acq[int(r.choice(len(acq), p=w / w.sum()))]
    if cfg.scanner_mode == "paper":
        fs = 1.0 if visit == 0 else 1.5
    else:  # "mixed": the field strength of the drawn SPIDER protocol (1.5 T or 3 T), per scan
        fs = float(spider[3])
    fov = r.uniform(*cfg.fov_mm)
    lo, hi = cfg.matrix
    matrix = int(np.clip(16 * round(fov / spider[0] / 16), lo, hi))
    matrix = int(16 * round(matrix / 16))
    matrix = int(np.clip(matrix, lo, hi))
    spacing = min(fov / matrix, cfg.max_spacing_mm)  # a coarse protocol gets a smaller FOV instead
    thickness, between = spider[1], spider[2]
    n_slices = int(r.integers(cfg.slices[0], cfg.slices[1] + 1))
    o = cfg.obliquity_deg
    rot = axis_rotation
    stack = rot(0, r.uniform(-o, o)) @ rot(1, r.uniform(-o, o)) @ rot(2, r.uniform(-o, o))
    rp = cfg.reposition_mm
    body_rot = rot(2, r.normal(0, 1.5)) @ rot(1, r.normal(0, 1.0)) @ rot(0, r.normal(0, 1.0))
    body_shift = np.array([r.normal(0, rp), r.normal(0, rp), r.normal(0, 2 * rp)])
    snr_sd = {1.0: 0.055, 1.5: 0.035}.get(fs, 0.025) * r.uniform(0.8, 1.25)
    gains = {
        "fat": (1.12 if fs < 1.25 else 1.0) * r.uniform(0.9, 1.1),
        "csf": (0.92 if fs < 1.25 else 1.0) * r.uniform(0.9, 1.1),
        "muscle": r.uniform(0.85, 1.15),
        "disc": (0.9 if fs < 1.25 else 1.0) * r.uniform(0.9, 1.1),
        "marrow": r.uniform(0.9, 1.1),
    }
    return Acquisition(
        field_strength=fs, spacing=float(spacing), thickness=float(thickness), between=float(between),
        n_slices=n_slices, matrix=matrix, rotation=body_rot, stack_rotation=stack, body_shift=body_shift,
        flipped=bool(r.random() < cfg.flipped_order_fraction), naming=int(r.integers(0, 3)),
        intensity_scale=float(r.uniform(600, 2000)), noise_sd=float(snr_sd), tissue_gain=gains,
        bias=r.normal(0, 1, 4), echo_time=float(r.uniform(90, 120)), repetition_time=float(r.uniform(2800, 4500)),
    )
