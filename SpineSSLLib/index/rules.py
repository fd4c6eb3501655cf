"""What the index decides from header facts: the selection rules (``IndexConfig``), T2 or not
(``classify_t2``), which series of a study is selected (``select_series``), and the free subject
labels (sex, age bin) computed in memory from PatientSex / PatientAge / dates."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
from dataclasses import dataclass, field

from ..errors import ConfigError

@dataclass
class IndexConfig:
    """Series-selection rules; override with a JSON file (``--config``) holding any of these keys."""

    t2_pattern: str = r"t2"  # SeriesDescription/ProtocolName regex (case-insensitive) meaning T2
    exclude_pattern: str = r"t1|stir|flair|dwi|dixon|scout|locali[sz]er|survey|myelo"
    min_t2_echo_ms: float = 60.0  # series without a telling description: T2 if TE >= this
    max_oblique_deg: float = 30.0
    spacing_tol_mm: float = 0.05  # allowed deviation of a slice gap from the median gap
    prefer: str = "most_slices"  # tie-break among T2 sagittal series of a study: most_slices | last | first
    age_bin_edges: list = field(default_factory=lambda: [40, 50, 60, 70])  # age_bin k: edges[k-1] <= age < edges[k]

    def __post_init__(self):
        for k in ("t2_pattern", "exclude_pattern"):
            try:
                re.compile(getattr(self, k))
            except re.error as e:
                raise ConfigError(f"{k}: invalid regular expression ({e})") from e
        if self.prefer not in ("most_slices", "last", "first"):
            raise ConfigError(f"prefer must be most_slices, last or first, got {self.prefer!r}")
        e = self.age_bin_edges
        if not isinstance(e, (list, tuple)) or not all(isinstance(v, (int, float)) for v in e) or \
                any(b <= a for a, b in zip(e, e[1:])):
            raise ConfigError(f"age_bin_edges must be increasing numbers (years), got {e!r}")
        self.age_bin_edges = list(e)

    @classmethod
    def from_file(cls, path) -> "IndexConfig":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read index config ({type(e).__name__})", path) from e
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(names)}", path)
        return cls(**d)



def sex_label(value: str) -> str:
    """PatientSex -> class: "0" female, "1" male, "" other or unknown."""
    return {"F": "0", "M": "1"}.get((value or "").strip().upper()[:1], "")


def age_years(patient_age: str = "", birth_date: str = "", study_date: str = "") -> float | None:
    """Age at the study in years from PatientAge ("045Y", "030M", "012W", "100D"), else from the
    birth and study dates; None when neither is usable.  Computed in memory only."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([YMWD]?)\s*", (patient_age or "").upper())
    if m:
        n = int(m.group(1))
        return n / {"Y": 1, "": 1, "M": 12, "W": 52.1775, "D": 365.25}[m.group(2)]
    b, s = _days(birth_date), _days(study_date)
    if b is not None and s is not None and s >= b:
        return (s - b).days / 365.25
    return None


def age_bin(age: float | None, edges) -> str:
    """Decade bin of an age (see ``IndexConfig.age_bin_edges``), "" when unknown."""
    if age is None or not 0 <= age < 150:
        return ""
    return str(sum(age >= e for e in edges))


def _days(date: str) -> _dt.date | None:
    date = (date or "").strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y"):
        try:
            return _dt.datetime.strptime(date, fmt).date()
        except ValueError:
            pass
    return None



# --------------------------------------------------------------------------------------------
# T2 sagittal selection
# --------------------------------------------------------------------------------------------

def classify_t2(description: str, echo_time: float | None, cfg: IndexConfig) -> tuple[bool, str]:
    """(is T2, how decided): description first, echo time when the description says nothing."""
    d = description or ""
    if re.search(cfg.exclude_pattern, d, re.IGNORECASE):
        return False, "description"
    if re.search(cfg.t2_pattern, d, re.IGNORECASE):
        return True, "description"
    if echo_time is not None:
        return echo_time >= cfg.min_t2_echo_ms, "echo time"
    return False, "unknown"


@dataclass
class SeriesRecord:
    row: dict
    files: list[str]  # paths relative to ROOT
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""
    series_number: int | None = None
    is_t2: bool = False
    ok: bool = False
    family_raw: str = ""



def select_series(records: list[SeriesRecord], cfg: IndexConfig) -> None:
    by_study: dict[tuple, list[SeriesRecord]] = {}
    for rec in records:
        by_study.setdefault((rec.patient_id, rec.study_uid), []).append(rec)
    for recs in by_study.values():
        cands = [r for r in recs if r.ok and r.is_t2]
        if cands:
            if cfg.prefer == "most_slices":
                best = max(cands, key=lambda r: (int(r.row["slices"] or 0), r.series_number or 0))
            elif cfg.prefer == "last":
                best = max(cands, key=lambda r: r.series_number or 0)
            else:
                best = min(cands, key=lambda r: r.series_number or 0)
        else:
            best = None
        for r in recs:
            if r is best:
                r.row["status"] = "selected"
            elif not r.ok:
                r.row["status"] = "rejected"
            else:
                r.row["status"] = "not_selected"
                r.row["reason"] = ("another sagittal T2 series of this study was selected" if r.is_t2
                                   else f"not T2 (by {r.row['t2_by']})")
