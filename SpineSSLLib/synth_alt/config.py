"""``AltConfig``: the knobs of the held-out evaluation generator, their validation and presets.

Only cohort structure is a knob (subjects, visits, twins, grading, rater noise, matrix cap).
The rendering regime itself (shapes, contrast, field of view, scanner) is fixed on purpose:
it is the held-out regime, and it should not be tuned towards what a model trained on the
main generator finds easy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class AltConfig:
    subjects: int = 40
    seed: int = 0
    followup_fraction: float = 0.6  # subjects with at least one follow-up
    three_visit_fraction: float = 0.2  # of those, share with a second follow-up
    twin_fraction: float = 0.3  # share of subjects in twin pairs
    graded_fraction: float = 0.9  # subjects whose discs carry the rater's grades
    interval_years: tuple[float, float] = (5.0, 12.0)  # baseline -> first follow-up
    baseline_age: tuple[float, float] = (25.0, 75.0)
    female_fraction: float = 0.6
    rater_noise: float = 0.18  # target share of graded discs moved to an adjacent grade
    max_matrix: int = 768  # cap of the reconstructed in-plane matrix (either axis)
    fat_sat_fraction: float = 0.15  # series acquired with fat suppression
    preset: str = "custom"

    def validate(self) -> "AltConfig":
        if not isinstance(self.subjects, int) or isinstance(self.subjects, bool) or self.subjects < 1:
            raise ConfigError(f"subjects must be a positive integer, got {self.subjects!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name in ("followup_fraction", "three_visit_fraction", "twin_fraction", "graded_fraction",
                     "female_fraction", "fat_sat_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0):
                raise ConfigError(f"{name} must be between 0 and 1, got {v!r}")
        if not (isinstance(self.rater_noise, (int, float)) and 0.0 <= self.rater_noise <= 0.5):
            raise ConfigError(f"rater_noise must be between 0 and 0.5, got {self.rater_noise!r}")
        for name, lo_min, hi_max in (("interval_years", 0.5, 30), ("baseline_age", 18, 95)):
            v = getattr(self, name)
            if not (isinstance(v, (tuple, list)) and len(v) == 2 and lo_min <= v[0] <= v[1] <= hi_max):
                raise ConfigError(f"{name} must be a range within [{lo_min}, {hi_max}], got {v!r}")
        if not (isinstance(self.max_matrix, int) and 192 <= self.max_matrix <= 1024):
            raise ConfigError(f"max_matrix must be an integer between 192 and 1024, got {self.max_matrix!r}")
        return self

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AltConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown synth-alt knob(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}).validate()


PRESETS: dict[str, dict] = {
    # seconds: tests (coarse matrices only)
    "tiny": dict(subjects=3, followup_fraction=0.67, three_visit_fraction=0.0, twin_fraction=0.67,
                 max_matrix=320, preset="tiny"),
    # an evaluation cohort of a useful size: a few minutes on 2 cores
    "eval": dict(subjects=40, preset="eval"),
    # the size of the independent cohort of issue 15 (about 80 subjects, 150 scans)
    "large": dict(subjects=80, followup_fraction=0.8, three_visit_fraction=0.12, preset="large"),
}


def preset(name: str, **overrides) -> AltConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    kw = dict(PRESETS[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return AltConfig(**kw).validate()
