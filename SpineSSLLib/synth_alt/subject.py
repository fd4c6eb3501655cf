"""Subjects of the held-out generator: identity that persists but ages, and disc degeneration.

Numbers only (no pixels).  Randomness is keyed by (seed, family, purpose) with
``numpy.random.SeedSequence`` so a subject does not depend on the subjects after it.

The spine is described differently from the main generator: a column of ten mobile vertebrae
(T8..L5) on a smooth centreline given by its curvature (sacral slope, lumbar lordosis, lower
thoracic kyphosis, scoliosis), each vertebral body a deformed superellipsoid (half depth /
height / width, cross-section and vertical exponents, wedge, posterior-wall concavity, endplate
bowls, five radial-basis displacement bumps), marrow described by a fat fraction with a smooth
3D fat-fraction field, fat islands and haemangiomas; the sacrum one curved tapering body with
fused segments.  Degeneration: a latent Gaussian per disc (subject propensity, disc term, age)
whose baseline quantiles are SPIDER's grade frequencies per disc, growing with time; its
position inside a grade's quantile band drives nucleus T2, height loss, bulge, clefts, vacuum
and endplate changes, and the rater is most often wrong close to a grade boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .. import DISC_NAMES, LEVEL_NAMES
from ..synth.config import SPIDER_GRADE_COUNTS  # real-data anchor (SPIDER), not rendering code
from .config import AltConfig

MOBILE = ("T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5")
CHAIN_DISCS = tuple(f"{a}-{b}" for a, b in zip(MOBILE, MOBILE[1:] + ("S1",)))
GRADED_OFFSET = CHAIN_DISCS.index(DISC_NAMES[0])  # chain index of T12-L1

# Mean dimensions (mm): full height, AP depth, width of T8..L5; disc heights T8-T9..L5-S1;
# wedge = anterior minus posterior height.
HEIGHT = np.array([19.0, 20.0, 21.0, 22.5, 24.0, 25.0, 26.0, 26.5, 26.0, 25.0])
DEPTH = np.array([27.0, 28.0, 29.5, 31.0, 32.0, 33.5, 35.0, 36.0, 36.5, 36.0])
WIDTH = np.array([33.0, 35.0, 37.0, 40.0, 43.0, 45.0, 47.0, 49.0, 51.0, 53.0])
WEDGE = np.array([-1.5, -1.5, -1.5, -1.2, -1.0, -0.8, 0.0, 0.5, 1.2, 3.0])
DISC_H = np.array([5.0, 5.5, 6.0, 6.5, 7.0, 8.5, 9.5, 10.5, 11.5, 10.0])
N_RBF = 5

# degeneration latent = W_S * propensity + W_D * disc term + W_A * standardised age
_W = np.array([0.6, 0.55, 0.58])
W_S, W_D, W_A = _W / np.linalg.norm(_W)
RATE_YEAR = (0.045, 0.035)  # progression of the latent per year: base + |N(0, sd)|


def rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 77_000, *map(int, key)]))


def grade_cdf() -> dict[str, np.ndarray]:
    """Per graded disc: cumulative SPIDER frequency at the 1|2, 2|3, 3|4 boundaries."""
    out = {}
    for d in DISC_NAMES:
        c = np.asarray(SPIDER_GRADE_COUNTS[d], float)
        out[d] = np.cumsum(c)[:-1] / c.sum()
    return out


def appearance(z: float, cum: np.ndarray) -> float:
    """Latent -> continuous appearance a in [0, 4): grade g spans g-1 <= a < g, linear in the
    quantile inside the grade's band."""
    u = NormalDist().cdf(float(z))
    edges = np.concatenate([[0.0], cum, [1.0]])
    g = int(np.clip(np.searchsorted(edges, u, side="right") - 1, 0, 3))
    frac = (u - edges[g]) / max(edges[g + 1] - edges[g], 1e-9)
    return float(min(g + frac, 3.999))


@dataclass
class Subject:
    subject_id: str
    family_id: str
    index: int
    sex: str
    baseline_age: float
    weight: float
    graded: bool
    n_visits: int
    years: list[float]
    vb: dict[str, np.ndarray]  # per key (10,) or (10, ...) arrays, T8..L5
    sacrum: dict[str, float]
    tex: np.ndarray  # (11, 5, 6, 5) marrow fat-fraction field (10 mobile + S1), baseline
    tex_new: np.ndarray  # replacement field (renewed share grows with time)
    islands: list[tuple[int, np.ndarray, float, float, float]]  # (vertebra, pos, radius, strength, onset)
    spine: dict[str, float]
    discs: dict[str, np.ndarray]  # per chain disc (10,)
    soft: dict[str, float]
    propensity: float
    rater_draw: np.ndarray  # (n_visits, 6, 2) uniform draws for the rater


@dataclass
class Visit:
    subject: Subject
    visit: int
    years: float
    age: float
    vb: dict[str, np.ndarray]
    sacrum: dict[str, float]
    tex_mix: float
    islands: list[tuple[int, np.ndarray, float, float]]
    spine: dict[str, float]
    disc_height: np.ndarray  # (10,) mm
    nucleus: dict[str, np.ndarray]  # per chain disc (10,) rendering parameters
    latent: np.ndarray  # (6,) graded discs
    appearance: np.ndarray  # (6,)
    true_grades: list[int]
    grades: list[int | None]
    weight: float

    def fingerprint(self) -> dict:
        """Hidden identity parameters (calibration only).  Per level the keys of the main
        generator's fingerprint (``height`` ... ``osteophyte``, same meaning where one exists),
        plus this generator's own shape parameters."""
        out = {}
        vb = self.vb
        for name in LEVEL_NAMES:
            if name == "S1":
                s = self.sacrum
                d = {"height": s["len_s1"], "depth": 2 * s["a"], "width": 2 * s["c"], "wedge": s["kappa"] * 100,
                     "conc_sup": s["conc"], "conc_inf": 0.0, "conc_centre": 0.0, "wave_amp": s["remnant"],
                     "wave_phase": s["promontory"], "corner": 4.0, "marrow": s["ff"], "osteophyte": 0.0,
                     "p_xs": 2.2, "post_conc": 0.0, "rbf": [0.0] * (N_RBF * 3)}
            else:
                i = MOBILE.index(name)
                amp = vb["rbf_amp"][i]
                d = {"height": 2 * vb["b"][i], "depth": 2 * vb["a"][i], "width": 2 * vb["c"][i],
                     "wedge": vb["wedge"][i], "conc_sup": vb["conc_sup"][i], "conc_inf": vb["conc_inf"][i],
                     "conc_centre": vb["bowl_u"][i], "wave_amp": float(np.sqrt((amp**2).mean())),
                     "wave_phase": float(np.arctan2(amp[0, 1], amp[0, 0])), "corner": vb["q"][i],
                     "marrow": vb["ff"][i], "osteophyte": vb["osteo"][i], "p_xs": vb["p"][i],
                     "post_conc": vb["post_conc"][i], "rbf": [round(float(v), 4) for v in amp.ravel()]}
            d = {k: (round(float(v), 4) if not isinstance(v, list) else v) for k, v in d.items()}
            d["n_islands"] = sum(1 for isl in self.islands if isl[0] == (10 if name == "S1" else MOBILE.index(name)))
            out[name] = d
        return {"generator": "alt", "levels": out, "lordosis_deg": round(self.spine["ll"], 3),
                "sacral_slope_deg": round(self.spine["ss"], 3), "scoliosis_mm": round(self.spine["sco_amp"], 3),
                "texture_mix": round(self.tex_mix, 4)}


def _smooth_grid(r, shape) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    g = gaussian_filter(r.normal(size=shape), 0.8, mode="wrap")
    return g / (g.std(axis=tuple(range(1, g.ndim)), keepdims=True) + 1e-9)


def make_family(cfg: AltConfig, fam: int, first: int, size: int) -> list[Subject]:
    fr = rng(cfg.seed, fam, 0)
    rho = float(fr.uniform(0.4, 0.7)) if size > 1 else 0.0
    shared = fr.normal(size=96)
    out = []
    for m in range(size):
        r = rng(cfg.seed, fam, 1 + m)
        z = np.sqrt(rho) * shared + np.sqrt(1 - rho) * r.normal(size=96)
        out.append(_subject(cfg, first + m, fam, z, r))
    return out


def _subject(cfg: AltConfig, idx: int, fam: int, z: np.ndarray, r: np.random.Generator) -> Subject:
    nv = 1
    if r.random() < cfg.followup_fraction:
        nv = 3 if r.random() < cfg.three_visit_fraction else 2
    years = [0.0]
    for _ in range(nv - 1):
        years.append(years[-1] + (r.uniform(*cfg.interval_years) if len(years) == 1 else r.uniform(1.0, 5.0)))
    sex = "F" if r.random() < cfg.female_fraction else "M"
    size = (1.0 if sex == "F" else 1.07) * (1 + 0.06 * z[0])
    lv = lambda sd, j: sd * (0.55 * z[j] + 0.84 * r.normal(size=10))  # family + individual, per vertebra
    wedge = WEDGE * (1 + 0.3 * z[4]) + lv(1.8, 5)
    fracture = r.random(10) < 0.03
    fracture[:3] = False
    wedge = np.where(fracture, -r.uniform(0.2, 0.35, 10) * HEIGHT, wedge)  # anterior compression
    vb = {
        "b": HEIGHT / 2 * size * (1 + lv(0.07, 1)),
        "a": DEPTH / 2 * size * (1 + lv(0.08, 2)),
        "c": WIDTH / 2 * size * (1 + lv(0.07, 3)),
        "wedge": wedge,
        "p": np.clip(2.5 + lv(0.35, 6), 1.9, 3.4),
        "q": np.clip(5.5 + lv(1.4, 7), 3.2, 9.5),
        "post_conc": np.clip(2.0 + lv(1.1, 8), 0.0, 5.0),
        "conc_sup": np.clip(1.3 + lv(0.6, 9), 0.2, 3.5),
        "conc_inf": np.clip(1.8 + lv(0.7, 10), 0.3, 4.0),
        "bowl_u": np.clip(lv(0.12, 11), -0.3, 0.3),
        "rbf_c": r.uniform(-0.75, 0.75, (10, N_RBF, 3)),
        "rbf_amp": r.normal(0, 1.1, (10, N_RBF, 3)) * np.array([1.0, 0.6, 1.0]),
        "ff": np.clip(0.42 + 0.09 * z[12] + 0.04 * r.normal(size=10), 0.15, 0.8),
        "osteo_rate": np.clip(0.6 + 0.3 * z[13] + 0.25 * r.normal(size=10), 0.0, 1.6),
        "tex_amp": np.full(10, float(np.clip(0.09 + 0.03 * z[14], 0.03, 0.18))),
        "fracture": fracture.astype(float),
    }
    sacrum = {
        "a": float(DEPTH[-1] / 2 * 0.92 * size * (1 + 0.07 * r.normal())),
        "c": float(46.0 * size * (1 + 0.06 * r.normal())),
        "length": float(np.clip(105 * size * (1 + 0.08 * z[15]), 80, 135)),
        "kappa": float(np.deg2rad(np.clip(70 + 14 * z[16], 35, 110)) / 105.0),  # sacral kyphosis (rad/mm)
        "len_s1": float(np.clip(27 * size * (1 + 0.07 * r.normal()), 20, 36)),
        "conc": float(np.clip(0.8 + 0.4 * r.normal(), 0.1, 2.0)),
        "remnant": float(r.uniform(0.0, 1.0)),  # brightness of the S1-S2 remnant disc
        "promontory": float(r.uniform(0.0, 4.0)),  # anterior-superior lip (mm)
        "ff": float(np.clip(0.5 + 0.09 * z[12] + 0.05 * r.normal(), 0.2, 0.85)),
        "coccyx": float(r.integers(3, 5)),
    }
    tex = _smooth_grid(r, (11, 5, 6, 5))
    tex_new = _smooth_grid(r, (11, 5, 6, 5))
    islands = []
    for v in range(11):
        for _ in range(r.poisson(0.5)):
            onset = -1.0 if r.random() < 0.6 else float(r.uniform(0, 12))
            kind = 1.0 if r.random() < 0.7 else -1.0  # +1 fat island, -1 haemangioma (fat + water)
            islands.append((v, r.uniform(-0.6, 0.6, 3), float(r.uniform(2.5, 7.5)), kind, onset))
    spine = {
        "ss": float(np.clip(38 + 7 * z[20], 18, 60)),
        "ll": float(np.clip(50 + 10 * z[21], 20, 80)),
        "tk": float(np.clip(18 + 6 * z[22], 0, 40)),
        "ll_centre": float(r.uniform(0.25, 0.45)),  # where along L1-S1 the lordosis concentrates
        "sco_amp": float(abs(3.0 * z[23])), "sco_phase": float(r.uniform(0, 2 * np.pi)),
        "sco_wavelength": float(r.uniform(180, 400)),
    }
    discs = {
        "h_rel": np.clip(np.exp(0.15 * (0.5 * z[24] + 0.87 * r.normal(size=10))), 0.6, 1.6),
        "bulge": np.clip(1.0 + 0.4 * r.normal(size=10), 0.2, 2.5),
        "nuc_u": np.clip(0.12 + 0.06 * r.normal(size=10), -0.05, 0.3),
        "nuc_size": np.clip(0.6 + 0.06 * r.normal(size=10), 0.45, 0.75),
        "t2_rel": np.clip(1 + 0.09 * r.normal(size=10), 0.7, 1.3),
        "cleft": r.random(10), "fissure": r.random(10), "vacuum": r.random(10), "modic": r.random(10),
        "modic_type": (r.random(10) < 0.35).astype(float) + 1.0,
        "latent_disc": r.normal(size=10),
        "rate": RATE_YEAR[0] + np.abs(r.normal(0, RATE_YEAR[1], 10)),
    }
    weight = float(np.clip(70 + 13 * z[30] + (9 if sex == "M" else 0), 42, 140))
    soft = {
        "canal_ap": float(np.clip(15.5 + 1.8 * z[31], 10, 21)),
        "canal_w": float(np.clip(11 + 1.2 * z[32], 8, 15)),
        "epi_fat": float(np.clip(3.0 + 1.2 * r.normal(), 0.5, 6.0)),
        "muscle": float(np.clip(48 + 8 * z[33], 28, 70)),
        "fat_post": float(np.clip(8 + 0.55 * (weight - 70) + 5 * r.normal(), 3, 55)),
        "abdomen": float(np.clip(110 + 1.4 * (weight - 70) + 15 * r.normal(), 70, 220)),
        "conus": float(r.uniform(0.3, 1.6)),  # conus tip: vertebral units below T12's centre
        "bladder": float(r.uniform(0.0, 1.0)),
        "bowel_seed": int(r.integers(0, 2**31 - 1)),
    }
    return Subject(
        subject_id=f"H{idx + 1:04d}", family_id=f"HF{fam + 1:04d}", index=idx, sex=sex,
        baseline_age=float(r.uniform(*cfg.baseline_age)), weight=weight,
        graded=bool(r.random() < cfg.graded_fraction), n_visits=nv, years=years, vb=vb, sacrum=sacrum,
        tex=tex, tex_new=tex_new, islands=islands, spine=spine, discs=discs, soft=soft,
        propensity=float(z[40]), rater_draw=r.random((nv, 6, 2)),
    )


def visit(cfg: AltConfig, s: Subject, k: int, cdf: dict[str, np.ndarray] | None = None) -> Visit:
    cdf = cdf or grade_cdf()
    t = s.years[k]
    dec = t / 10.0
    age = s.baseline_age + t
    r = rng(cfg.seed, 5_000_000 + s.index, k)
    vb = {key: np.array(v, copy=True) for key, v in s.vb.items()}
    vb["b"] = vb["b"] * (1 - 0.015 * dec * (1 + 0.6 * r.random(10)))
    vb["conc_sup"] = vb["conc_sup"] + 0.2 * dec
    vb["conc_inf"] = vb["conc_inf"] + 0.25 * dec
    vb["ff"] = np.clip(vb["ff"] + 0.05 * dec + 0.01 * r.normal(size=10), 0.1, 0.9)
    vb["rbf_amp"] = vb["rbf_amp"] * (1 + 0.08 * dec * r.normal(size=vb["rbf_amp"].shape))
    vb["osteo"] = np.clip(np.maximum(0.0, (age - 40) / 10) * vb["osteo_rate"] + 0.3 * r.normal(size=10), 0, 7)
    new_frac = (r.random(10) < 0.01 * dec) & (np.arange(10) >= 3) & (vb["fracture"] == 0)
    vb["wedge"] = np.where(new_frac, -0.25 * 2 * vb["b"], vb["wedge"])
    sac = dict(s.sacrum)
    sac["ff"] = float(min(0.9, sac["ff"] + 0.05 * dec))
    islands = [(v, pos, rad * (1 + 0.2 * max(0.0, t - max(on, 0)) / 10), kind)
               for v, pos, rad, kind, on in s.islands if on <= t]
    sp = dict(s.spine)
    if k > 0:  # posture differs between visits
        sp["ll"] += float(r.normal(0, 5.0))
        sp["ss"] += float(r.normal(0, 3.0))
        sp["tk"] += float(r.normal(0, 3.0))
    # degeneration of the six graded discs (chain discs above T12-L1 follow the T12-L1 model)
    d = s.discs
    lo, hi = cfg.baseline_age
    age_std = (s.baseline_age - (lo + hi) / 2) / max((hi - lo) / np.sqrt(12), 1.0)  # uniform ages -> sd 1
    z0 = W_S * s.propensity + W_D * d["latent_disc"] + W_A * age_std
    zt = z0 + d["rate"] * t
    app_all = np.array([appearance(zt[i], cdf[DISC_NAMES[max(i - GRADED_OFFSET, 0)]]) if i >= GRADED_OFFSET
                        else 0.6 * appearance(zt[i], cdf[DISC_NAMES[0]]) for i in range(10)])
    app = app_all[GRADED_OFFSET:]
    true_grades = [int(np.floor(a)) + 1 for a in app]
    grades: list[int | None] = [None] * 6
    if s.graded:
        grades = [_rater(cfg, a, g, s.rater_draw[k, i]) for i, (a, g) in enumerate(zip(app, true_grades))]
    a = app_all
    hf = 1 - 0.05 * np.clip(a - 1.0, 0, None) - 0.12 * np.clip(a - 2.2, 0, None)
    height = DISC_H * s.discs["h_rel"] * hf * (1 + 0.04 * r.normal(size=10)) * (1 - 0.02 * dec)
    nucleus = {
        "t2": 230.0 * np.exp(-0.42 * a) * d["t2_rel"] * (1 + 0.05 * r.normal(size=10)),
        "pd": 0.9 - 0.06 * a,
        "size": d["nuc_size"] * (1 - 0.1 * a),
        "u": d["nuc_u"],
        "blur": 0.5 + 0.35 * a,
        "hetero": 0.04 + 0.06 * a,
        "cleft": np.where((d["cleft"] > 0.3) & (a > 0.7), np.clip(a - 0.7, 0, 1.5) * 0.4, 0.0),
        "vacuum": ((a > 3.2) & (d["vacuum"] > 0.5)).astype(float),
        "hiz": ((a > 1.2) & (d["fissure"] > 0.75)).astype(float),
        "modic": np.where((a > 2.4) & (d["modic"] > 0.6), d["modic_type"], 0.0),
        "bulge": d["bulge"] + 1.1 * np.clip(a - 1.5, 0, None),
        "a": a,
    }
    return Visit(subject=s, visit=k, years=t, age=age, vb=vb, sacrum=sac, tex_mix=float(min(0.6, 0.35 * dec)),
                 islands=islands, spine=sp, disc_height=np.clip(height, 1.2, 18.0), nucleus=nucleus,
                 latent=zt[GRADED_OFFSET:], appearance=app, true_grades=true_grades, grades=grades,
                 weight=float(s.weight * (1 + 0.04 * dec * r.normal())))


def _rater(cfg: AltConfig, a: float, g: int, draw: np.ndarray) -> int:
    """The rater errs mostly near a grade boundary, towards the nearer neighbouring grade."""
    lo, hi = a - (g - 1), g - a  # distances to the lower / upper boundary
    cand = []
    if g > 1:
        cand.append((lo, g - 1))
    if g < 4:
        cand.append((hi, g + 1))
    dist, other = min(cand)
    p = min(1.0, cfg.rater_noise / 0.35 * np.exp(-dist / 0.25))
    return int(other) if draw[0] < p else int(g)
