"""Random spinal columns T8 ... coccyx for the detector's training data (numbers, no pixels).

Body frame (mm): x towards the patient's left, y posterior, z superior (LPS axes).  Each body
has a local frame: ``e_u`` posterior, ``e_v`` superior (its axis, tilted by the sagittal angle
``tilt``), ``e_w`` = x.  The column is built outwards from the S1 segment (at the origin):
upwards through the discs to T8, downwards through the sacral junctions to the coccyx.

Ranges are deliberately wider than SpineSSL's cohort generator (``SpineSSLLib.synth``):
vertebral heights and depths x0.75-1.3 globally and +-25 % per level, wedging -6..+8 mm (and
compression fractures), disc heights x0.4-1.6 with collapsed discs, lordosis x0.2-1.8, a
lumbosacral angle 8-40 deg, and the sacrum built one of four ways (``SACRUM_STYLES``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NAMES = ("T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5",
         "S1", "S2", "S3", "S4", "S5", "Co1", "Co2", "Co3")
I_S1 = NAMES.index("S1")
I_T12 = NAMES.index("T12")
SACRUM_STYLES = ("segmented", "fused", "s1_disc", "block")

# mean height / AP depth (mm) T8..L5, then S1..S5, Co1..Co3
_HEIGHT = np.array([20.0, 20.5, 21.0, 22.0, 23.0, 24.5, 25.5, 26.5, 26.5, 25.5,
                    27.0, 21.0, 17.0, 13.5, 10.5, 9.0, 7.5, 6.0])
_DEPTH = np.array([26.0, 27.0, 28.0, 29.0, 30.0, 32.0, 33.5, 35.0, 36.0, 36.0,
                   40.0, 31.0, 25.0, 20.0, 16.0, 13.0, 10.5, 8.5])
_WIDTH_RATIO = np.array([1.25, 1.27, 1.3, 1.32, 1.35, 1.4, 1.42, 1.45, 1.48, 1.5,
                         2.3, 2.0, 1.6, 1.35, 1.2, 1.1, 1.0, 1.0])  # sacral ala make S1/S2 wide
# disc heights T8-T9 ... L5-S1 (mm) and sagittal tilt of each mobile body (deg, anterior +)
_DISC = np.array([4.5, 5.0, 5.5, 6.0, 6.5, 8.0, 9.0, 10.0, 11.0, 10.5])
_TILT = np.array([-20.0, -17.0, -14.0, -11.0, -9.0, -6.0, -2.0, 3.0, 9.0, 17.0])
_WEDGE = np.array([-2.5, -2.5, -2.0, -2.0, -1.5, -0.5, 0.0, 0.3, 0.8, 2.5])


@dataclass
class Body:
    name: str
    centre: np.ndarray
    e_u: np.ndarray
    e_v: np.ndarray
    depth: float
    height: float
    width: float
    wedge: float = 0.0  # anterior minus posterior height (mm)
    conc_sup: float = 1.0  # endplate concavity depth (mm)
    conc_inf: float = 1.0
    corner: float = 2.0  # corner rounding (mm)
    power: float = 2.5  # superellipse exponent of the axial outline
    post_conc: float = 1.0  # concavity of the posterior wall (mm)
    osteophyte: float = 0.0  # anterior lip length at the endplates (mm)
    marrow_alt: bool = False  # marrow drawn from the alternative marrow tissue
    lesions: list = field(default_factory=list)  # (u, v, w local mm, radius mm)

    @property
    def index(self) -> int:
        return NAMES.index(self.name)

    @property
    def e_w(self) -> np.ndarray:
        return np.array([1.0, 0.0, 0.0])

    def corners(self) -> np.ndarray:
        """AS, PS, PI, AI mid-sagittal corners (4, 3) in the body frame (as SpineSSL's truth)."""
        d2 = self.depth / 2
        ha, hp = self.height + self.wedge / 2, self.height - self.wedge / 2
        c, u, v = self.centre, self.e_u, self.e_v
        return np.array([c - d2 * u + ha / 2 * v, c + d2 * u + hp / 2 * v,
                         c + d2 * u - hp / 2 * v, c - d2 * u - ha / 2 * v])


@dataclass
class Disc:
    upper: str
    lower: str
    centre: np.ndarray
    e_u: np.ndarray
    e_v: np.ndarray
    depth: float
    height: float
    width: float
    nucleus: float  # nucleus size factor (0: no nucleus, a dark degenerated or remnant disc)
    bulge: float  # posterior bulge (mm)
    kind: str = "disc"  # disc | remnant (sacral junction drawn as disc tissue) | bone (fused)


@dataclass
class Column:
    bodies: list[Body]
    discs: list[Disc]
    sacrum_style: str
    tilt: np.ndarray  # (len(NAMES),) deg
    x_offset: np.ndarray  # (len(NAMES),) scoliosis (mm, body frame x)
    soft: dict  # soft-tissue parameters (mm; see ``draw_column``)

    def body(self, name: str) -> Body:
        return self.bodies[NAMES.index(name)]


def _frame(tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.deg2rad(tilt_deg)
    return np.array([0.0, np.cos(t), np.sin(t)]), np.array([0.0, -np.sin(t), np.cos(t)])


def draw_column(rng: np.random.Generator) -> Column:
    """One random column T8 ... Co3 (the coccyx may be shorter: absent segments get height 0)."""
    n = len(NAMES)
    size = rng.uniform(0.78, 1.22)
    h = _HEIGHT * size * np.clip(1 + rng.normal(0, 0.09, n), 0.75, 1.25)
    d = _DEPTH * size * rng.uniform(0.88, 1.12) * np.clip(1 + rng.normal(0, 0.08, n), 0.75, 1.25)
    w = d * _WIDTH_RATIO * rng.uniform(0.85, 1.2) * np.clip(1 + rng.normal(0, 0.05, n), 0.85, 1.15)
    wedge = np.zeros(n)
    wedge[:I_S1] = _WEDGE * rng.uniform(0.3, 1.8) + rng.normal(0, 1.6, I_S1)
    if rng.random() < 0.15:  # a compression fracture: short, anteriorly wedged body
        f = int(rng.integers(0, I_S1))
        h[f] *= rng.uniform(0.45, 0.8)
        wedge[f] = -rng.uniform(3.0, 8.0)
    wedge = np.clip(wedge, -0.45 * h, 0.45 * h)
    # tilts: thoracic kyphosis / lumbar lordosis scaled separately, plus a random walk
    tilt = np.zeros(n)
    kyph, lord = rng.uniform(0.3, 1.8), rng.uniform(0.2, 1.8)
    base = np.where(np.arange(I_S1) < I_T12, _TILT * kyph, _TILT * lord)
    base[:I_T12] += _TILT[I_T12] * (lord - kyph)  # continuous at T12
    tilt[:I_S1] = base + np.cumsum(rng.normal(0, 2.0, I_S1))[::-1] * 0.7
    tilt[I_S1] = tilt[I_S1 - 1] + rng.uniform(8.0, 40.0)  # lumbosacral angle
    for i in range(I_S1 + 1, n):  # sacral and coccygeal kyphosis
        tilt[i] = tilt[i - 1] + (rng.uniform(5.0, 16.0) if i < NAMES.index("Co1") else rng.uniform(8.0, 25.0))
    amp = abs(rng.normal(0, 4.0))
    x_off = amp * np.sin(rng.uniform(0, 2 * np.pi) + 0.5 * np.arange(n))
    x_off[I_S1 + 1:] = x_off[I_S1]  # the sacrum is midline with S1
    # gaps between consecutive bodies: discs T8-T9 ... L5-S1, then the sacral / coccygeal junctions
    gaps = np.zeros(n - 1)
    gaps[:I_S1] = _DISC * rng.uniform(0.6, 1.4) * rng.uniform(0.5, 1.35, I_S1) * size
    collapse = rng.random(I_S1) < 0.12
    gaps[:I_S1] = np.where(collapse, gaps[:I_S1] * rng.uniform(0.15, 0.5, I_S1), gaps[:I_S1])
    gaps[:I_S1] = np.clip(gaps[:I_S1], 1.0, 18.0)
    style = SACRUM_STYLES[int(rng.choice(len(SACRUM_STYLES), p=[0.3, 0.3, 0.15, 0.25]))]
    kinds = ["disc"] * I_S1 + ["bone"] * (n - 1 - I_S1)
    for i in range(I_S1, NAMES.index("Co1") - 1):  # S1-S2 ... S4-S5
        if style == "segmented":
            gaps[i], kinds[i] = rng.uniform(1.0, 2.8), "remnant"
        elif style == "fused":
            gaps[i] = rng.uniform(-1.0, 0.8)
        elif style == "block":
            gaps[i] = rng.uniform(-3.0, -1.0) if i > I_S1 else rng.uniform(0.0, 0.6)
        else:  # s1_disc: a remnant disc under S1, the rest fused
            gaps[i], kinds[i] = (rng.uniform(2.0, 4.0), "remnant") if i == I_S1 else (rng.uniform(-1.0, 0.5), "bone")
    i_co = NAMES.index("Co1")
    n_co = int(rng.integers(0, 4))  # coccygeal segments present
    gaps[i_co - 1:] = rng.uniform(1.0, 3.0, n - i_co)
    kinds[i_co - 1:] = ["remnant"] * (n - i_co)
    present = np.ones(n, dtype=bool)
    present[i_co + n_co:] = False
    # centres: S1 at the origin, outwards
    eu, ev = zip(*(_frame(t) for t in tilt))
    eu, ev = np.array(eu), np.array(ev)
    c = np.zeros((n, 3))
    for i in range(I_S1 - 1, -1, -1):
        ed = ev[i] + ev[i + 1]
        ed /= np.linalg.norm(ed)
        c[i] = c[i + 1] + h[i + 1] / 2 * ev[i + 1] + gaps[i] * ed + h[i] / 2 * ev[i]
    for i in range(I_S1 + 1, n):
        ed = ev[i] + ev[i - 1]
        ed /= np.linalg.norm(ed)
        c[i] = c[i - 1] - h[i - 1] / 2 * ev[i - 1] - gaps[i - 1] * ed - h[i] / 2 * ev[i]
    c[:, 0] = x_off
    bodies = []
    for i, name in enumerate(NAMES):
        if not present[i]:
            continue
        sacral = i >= I_S1
        lesions = []
        for _ in range(rng.poisson(0.25)):
            lesions.append((rng.uniform(-0.35, 0.35) * d[i], rng.uniform(-0.3, 0.3) * h[i],
                            rng.uniform(-0.3, 0.3) * w[i], rng.uniform(2.0, 7.0)))
        bodies.append(Body(
            name, c[i], eu[i], ev[i], float(d[i]), float(h[i]), float(w[i]), float(wedge[i]),
            conc_sup=float(rng.uniform(0.0, 3.5) * (0.3 if i == I_S1 else 1.0)),
            conc_inf=float(rng.uniform(0.0, 3.5) if not sacral else rng.uniform(0.0, 1.0)),
            corner=float(rng.uniform(0.6, 4.5) if style != "block" or not sacral else rng.uniform(0.5, 1.5)),
            power=float(rng.uniform(2.0, 4.0)), post_conc=float(rng.uniform(0.0, 3.0)),
            osteophyte=float(rng.uniform(0.0, 5.0) if rng.random() < 0.35 and not sacral else 0.0),
            marrow_alt=bool(rng.random() < 0.15), lesions=lesions))
    discs = []
    for i in range(n - 1):
        if not (present[i] and present[i + 1]) or (kinds[i] == "bone" and gaps[i] <= 0):
            continue  # overlapping fused segments need no filling
        a, b = i, i + 1
        ed = ev[a] + ev[b]
        ed /= np.linalg.norm(ed)
        eud = np.array([0.0, ed[2], -ed[1]])
        bottom_a = c[a] - h[a] / 2 * ev[a]
        top_b = c[b] + h[b] / 2 * ev[b]
        mobile = kinds[i] == "disc"
        nuc = float(rng.uniform(0.0, 1.0) if mobile else (rng.uniform(0.0, 0.5) if i == I_S1 else 0.0))
        if mobile and i < I_T12:
            nuc *= 0.7
        discs.append(Disc(NAMES[a], NAMES[b], (bottom_a + top_b) / 2, eud, ed, float((d[a] + d[b]) / 2),
                          float(max(np.linalg.norm(top_b - bottom_a), 0.5)), float((w[a] + w[b]) / 2) * (1.0 if mobile else 0.9),
                          nuc, float(rng.uniform(0.0, 4.0) if mobile else 0.0), kinds[i]))
    soft = {
        "canal_depth": rng.uniform(11.0, 20.0), "canal_half_width": rng.uniform(8.0, 13.0),
        "epidural_fat": rng.uniform(0.0, 4.0), "conus": int(rng.integers(NAMES.index("L1"), NAMES.index("L3"))),
        "spinous_len": rng.uniform(20.0, 45.0), "spinous_half": rng.uniform(3.5, 9.0),
        "spinous_slope_thor": rng.uniform(0.5, 1.2), "spinous_slope_lumb": rng.uniform(0.05, 0.5),
        "lamina": rng.uniform(4.0, 8.0), "pedicle": rng.uniform(6.0, 10.0),
        "muscle_post": rng.uniform(30.0, 80.0), "fat_post": rng.uniform(4.0, 50.0),
        "prevertebral": rng.uniform(1.0, 10.0), "abdomen": rng.uniform(70.0, 220.0), "fat_ant": rng.uniform(5.0, 45.0),
        "aorta_r": rng.uniform(7.0, 13.0), "aorta_x": rng.uniform(5.0, 25.0), "ivc_r": rng.uniform(6.0, 12.0),
        "ivc_x": -rng.uniform(10.0, 25.0), "bifurcation": int(rng.integers(NAMES.index("L3"), NAMES.index("S1"))),
        "psoas_x": rng.uniform(20.0, 45.0), "psoas_half": rng.uniform(10.0, 25.0),
        "ligament": rng.uniform(0.5, 2.0), "cortex": rng.uniform(0.0, 2.0),
        "bladder": (rng.uniform(30.0, 90.0), rng.uniform(20.0, 50.0)) if rng.random() < 0.7 else None,
        "blobs": int(rng.integers(0, 12)), "blob_seed": int(rng.integers(0, 2**31 - 1)),
    }
    return Column(bodies, discs, style, tilt, x_off, soft)
