"""``SynthConfig``: every knob of the synthetic cohort, its validation and the presets.

Real-data anchors (SPIDER, van der Graaf et al., Sci Data 11:264, 2024, CC-BY 4.0):
``SPIDER_T2_ACQUISITIONS`` are the distinct (pixel spacing, slice thickness, spacing between
slices, field strength, series count) of SPIDER's 2D sagittal T2 series (overview.csv, 3D SPACE
series with 0.9 mm slices left out); ``SPIDER_GRADE_COUNTS`` are the Pfirrmann grades of
radiological_gradings.csv mapped to the paper's four classes (``PFIRRMANN_TO_CLASS``), per disc.
``Testing/test_synth_config.py`` re-derives both from the CSV files when they are present.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError

# (pixel spacing mm, slice thickness mm, spacing between slices mm, field strength T, n series)
SPIDER_T2_ACQUISITIONS: tuple[tuple[float, float, float, float, int], ...] = (
    (0.2865, 3.0, 3.3, 3.0, 1), (0.3646, 4.0, 4.4, 3.0, 4), (0.3906, 3.0, 3.3, 1.5, 1),
    (0.4557, 4.0, 4.4, 1.5, 1), (0.4712, 4.0, 4.4, 3.0, 1), (0.4783, 4.0, 4.4, 1.5, 17),
    (0.5, 3.0, 3.3, 3.0, 1), (0.5859, 3.0, 3.3, 1.5, 19), (0.625, 3.0, 3.3, 3.0, 89),
    (0.6641, 4.0, 4.8, 3.0, 1), (0.6771, 4.0, 4.8, 1.5, 24), (0.7292, 4.0, 4.4, 1.5, 16),
    (0.7292, 4.0, 4.8, 1.5, 14), (0.7812, 4.0, 4.8, 1.5, 1), (0.875, 4.0, 4.8, 1.5, 1),
    (0.9375, 3.5, 4.2, 1.5, 1), (1.0, 4.0, 4.8, 1.5, 1),
)

PFIRRMANN_TO_CLASS = {1: 1, 2: 1, 3: 2, 4: 3, 5: 4}
"""Pfirrmann 1-2 (homogeneous bright nucleus, normal height) -> class 1; 3 -> 2 (grey,
inhomogeneous, slight height loss); 4 -> 3 (dark grey, moderate loss); 5 -> 4 (black, collapsed)."""

# Four-class counts per disc (superior to inferior, DISC_NAMES order) from SPIDER.
SPIDER_GRADE_COUNTS: dict[str, tuple[int, int, int, int]] = {
    "T12-L1": (133, 54, 23, 7),
    "L1-L2": (113, 51, 37, 17),
    "L2-L3": (89, 69, 35, 25),
    "L3-L4": (74, 71, 47, 26),
    "L4-L5": (48, 72, 57, 41),
    "L5-S1": (51, 59, 49, 59),
}

SCANNER_MODES = ("paper", "mixed")


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of ``spine-ssl synth``.  Defaults follow the paper's cohort proportions.

    Calibration knobs (``marrow_change`` ... ``crop_jitter_mm``) are pinned by the tests; the
    figures they give are recorded in docs/synthetic-cohort.md (benchmarks/synth_calibration.py).
    """

    subjects: int = 20
    seed: int = 0
    followup_fraction: float = 423 / 1016  # subjects with follow-up scans (paper: 423 of 1016)
    three_visit_fraction: float = 0.15  # of those with follow-ups, share with two follow-ups
    twin_fraction: float = 0.5  # share of subjects that belong to a twin pair
    graded_fraction: float = 920 / 1016  # subjects whose discs carry grades (paper: 920 of 1016)
    interval_years: tuple[float, float] = (8.0, 12.0)  # baseline -> follow-up
    baseline_age: tuple[float, float] = (35.0, 70.0)
    female_fraction: float = 0.9  # TwinsUK is mostly female
    scanner_mode: str = "paper"  # "paper": 1.0 T baseline, 1.5 T follow-ups; "mixed": SPIDER's 1.5/3 T per scan
    rater_noise: float = 0.2  # share of graded discs moved to an adjacent grade
    # acquisition
    slices: tuple[int, int] = (11, 19)
    matrix: tuple[int, int] = (320, 512)  # square in-plane matrix, drawn then rounded to 16
    fov_mm: tuple[float, float] = (270.0, 320.0)
    max_spacing_mm: float = 0.9  # in-plane spacing cap (the FOV shrinks instead)
    obliquity_deg: float = 3.0  # max rotation of the slice stack away from true sagittal
    flipped_order_fraction: float = 0.3  # series whose slice index runs left -> right
    # identity / nuisance calibration
    marrow_change: float = 0.45  # share of the marrow texture renewed over 10 years
    lesion_rate: float = 0.8  # mean haemangiomas per subject (Poisson); new ones appear with age
    reposition_mm: float = 3.0  # out-of-plane / in-plane patient shift between visits (sd)
    posture_deg: float = 4.0  # change of lordosis between visits (sd, degrees)
    crop_jitter_mm: float = 2.5  # sd of the detector-like jitter the calibration crops use
    # degeneration
    nucleus_noise: float = 0.12  # per-disc spread of nucleus T2 signal not explained by the score
    height_noise: float = 0.12  # per-disc spread of disc height (relative)
    preset: str = "custom"

    def validate(self) -> "SynthConfig":
        def frac(name):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"{name} must be between 0 and 1, got {v!r}")

        if not isinstance(self.subjects, int) or isinstance(self.subjects, bool) or self.subjects < 1:
            raise ConfigError(f"subjects must be a positive integer, got {self.subjects!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("followup_fraction", "three_visit_fraction", "twin_fraction", "graded_fraction",
                     "female_fraction", "flipped_order_fraction", "marrow_change"):
            frac(name)
        if not 0.0 <= self.rater_noise <= 0.5:
            raise ConfigError(f"rater_noise must be between 0 and 0.5, got {self.rater_noise!r}")
        if self.scanner_mode not in SCANNER_MODES:
            raise ConfigError(f"scanner_mode must be one of {', '.join(SCANNER_MODES)}, got {self.scanner_mode!r}")
        for name, lo_min, hi_max in (("interval_years", 0.5, 30), ("baseline_age", 18, 95),
                                     ("slices", 3, 64), ("matrix", 64, 1024), ("fov_mm", 200, 500)):
            lo, hi = getattr(self, name)
            if not (lo_min <= lo <= hi <= hi_max):
                raise ConfigError(f"{name} must be a range within [{lo_min}, {hi_max}], got ({lo}, {hi})")
        for name in ("lesion_rate", "reposition_mm", "posture_deg", "crop_jitter_mm", "nucleus_noise",
                     "height_noise", "obliquity_deg"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 100.0):
                raise ConfigError(f"{name} must be a non-negative number, got {v!r}")
        if not (isinstance(self.max_spacing_mm, (int, float)) and 0.2 <= self.max_spacing_mm <= 2.0):
            raise ConfigError(f"max_spacing_mm must be between 0.2 and 2, got {self.max_spacing_mm!r}")
        if self.obliquity_deg > 15:
            raise ConfigError(f"obliquity_deg must be at most 15, got {self.obliquity_deg}")
        return self

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SynthConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown synth knob(s): {', '.join(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw).validate()

    def replace(self, **kw) -> "SynthConfig":
        return dataclasses.replace(self, **kw).validate()


PRESETS: dict[str, dict] = {
    # seconds: tests; small matrix (in-plane spacing then 1.05-1.4 mm, coarser than clinical scans)
    "tiny": dict(subjects=3, followup_fraction=0.67, three_visit_fraction=0.0, twin_fraction=0.67,
                 slices=(11, 13), matrix=(224, 256), max_spacing_mm=1.4, preset="tiny"),
    # the demo's default cohort: a minute or two on a laptop
    "demo": dict(subjects=40, followup_fraction=0.5, preset="demo"),
    # the paper's proportions (1016 subjects, 423 with follow-ups, 920 graded)
    "paper": dict(subjects=1016, preset="paper"),
}


def preset(name: str, **overrides) -> SynthConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    kw = dict(PRESETS[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return SynthConfig(**kw).validate()
