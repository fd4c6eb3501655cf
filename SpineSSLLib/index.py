"""Cohort indexing (``spine-ssl index ROOT --out C``): series grouping, sagittal T2 selection,
pseudonymous keys.

Headers only (no pixel data) are read.  Files are grouped by SeriesInstanceUID, each series'
geometry is checked (``io.series_geometry``: slices ordered by ImagePositionPatient projected
on the slice normal), one sagittal T2 series is selected per study, and subjects/time points
are keyed without identifiers:

- ``subject_key`` = salted SHA-256 of PatientID, ``scan_key``/``study_key`` = salted SHA-256 of
  the Series/StudyInstanceUID; the salt is drawn once per cohort (``C/cohort_salt.txt``);
- ``interval_days`` = days since the subject's first selected scan (StudyDate), ``timepoint``
  its rank; dates themselves are never written;
- ``family`` = salted hash of a user-supplied family/twin id (``--families CSV``);
- ``sex`` (0 = F, 1 = M, empty otherwise) from PatientSex and ``age_bin`` (decade bins, default
  0 = under 40, 1 = 40s, 2 = 50s, 3 = 60s, 4 = 70 and over) from PatientAge, or from the birth and
  study dates in memory: free labels for ``pretrain --aux-heads sex:2,age_bin:5``; the age and
  the dates themselves are never written;
- ``C/sources.csv`` maps each scan_key to salted hashes of its files' paths relative to ROOT,
  so ``extract`` finds the files again without any path (which may hold names) being stored.

NIfTI/NRRD/MHA cohorts (e.g. SPIDER ``<patient>_t2.mha``) are indexed from a table
(``--table CSV``: ``file``, ``subject``, ``date`` or ``interval_days``, optional ``family``,
``sex``, ``age``).

With ``shard`` (``--shard I/N``, ``shard.py``) only the subjects of shard I are indexed and the
manifests go to ``C/shards/index-I-of-N/``; ``spine-ssl merge C`` joins them.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import atomic
from .errors import ConfigError, InputError, ManifestError, SpineSSLError

SCHEMA = "spinessl.index/1"
SERIES_COLUMNS = [
    "scan_key", "subject_key", "study_key", "timepoint", "interval_days", "family", "status", "reason",
    "format", "description", "t2_by", "echo_time_ms", "field_strength", "manufacturer", "rows", "columns",
    "slices", "pixel_spacing_mm", "slice_spacing_mm", "slice_thickness_mm", "orientation", "obliquity_deg",
    "orientation_ok", "n_files", "sex", "age_bin",
]
ERROR_COLUMNS = ["file", "stage", "error_type", "message"]


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


# --------------------------------------------------------------------------------------------
# Keys and privacy (the helpers live in privacy.py; re-exported here for existing callers)
# --------------------------------------------------------------------------------------------

from .privacy import (  # noqa: E402,F401
    file_hash, identifiers, load_or_create_salt, redact, redact_error, salt_id, salted_key,
)


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


@dataclass
class IndexResult:
    series: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    n_files: int = 0
    n_ignored: int = 0

    @property
    def n_selected(self) -> int:
        return sum(r["status"] == "selected" for r in self.series)


def _fmt(v, nd=3):
    return "" if v is None else (f"{v:.{nd}f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v))


def _dicom_records(root: Path, cfg: IndexConfig, salt: str, result: IndexResult, files: list[str],
                   secret: frozenset = frozenset()):
    from . import progress
    from .io import read_header, series_geometry
    from .multiframe import expand_frames, files_of, where_of

    headers = []
    for path in progress.track(files, desc="reading headers", unit="file"):
        try:
            h = read_header(path)
        except SpineSSLError as e:
            result.errors.append({"file": os.path.relpath(path, root), "stage": "index",
                                  "error_type": type(e).__name__, "message": e.cause})
            continue
        if h is None:
            result.n_ignored += 1
            continue
        headers.append(h)
    secret = secret | identifiers(headers)
    for err in result.errors:
        err["file"] = redact(err["file"], secret)
        err["message"] = redact(err["message"], secret, words=True)
    # multi-frame files (Enhanced MR) give one header per frame; a series split into several
    # stacks (orientations, echoes) gives one record per stack (see ``multiframe``)
    groups: dict[tuple, list] = {}
    for h in expand_frames(headers):
        groups.setdefault((h.series_uid, getattr(h, "stack", "")), []).append(h)
    read_stack = _stacks_read(groups, cfg)
    records = []
    for (uid, stack), hs in groups.items():
        ref = hs[0]
        paths = files_of(hs)
        rel = [os.path.relpath(p, root) for p in paths]
        row = {c: "" for c in SERIES_COLUMNS}
        row.update(scan_key=salted_key(salt, "series:" + uid + (f"#stack{stack}" if stack else "")), format="dicom",
                   description=ref.series_description, echo_time_ms=_fmt(ref.echo_time),
                   field_strength=_fmt(ref.field_strength), manufacturer=ref.manufacturer,
                   rows=ref.rows, columns=ref.columns, n_files=len(paths),
                   pixel_spacing_mm="" if ref.pixel_spacing is None else "x".join(_fmt(float(v)) for v in ref.pixel_spacing),
                   slice_thickness_mm=_fmt(ref.slice_thickness), sex=sex_label(ref.patient_sex),
                   age_bin=age_bin(age_years(ref.patient_age, ref.birth_date, ref.study_date), cfg.age_bin_edges))
        rec = SeriesRecord(row, rel, ref.patient_id, ref.study_uid, ref.study_date, ref.series_number)
        try:
            geom = series_geometry(hs, where_of(hs, os.path.dirname(ref.path)), spacing_tol=cfg.spacing_tol_mm,
                                   max_oblique_deg=None)
            row.update(slices=len(geom.headers), slice_spacing_mm=_fmt(geom.slice_spacing),
                       orientation=geom.orientation, obliquity_deg=_fmt(geom.obliquity_deg, 1))
            ok_orient = geom.orientation == "sagittal" and geom.obliquity_deg <= cfg.max_oblique_deg
            row["orientation_ok"] = "yes" if ok_orient else "no"
            if geom.orientation != "sagittal":
                reason = f"not sagittal ({geom.orientation} slices)"
            elif not ok_orient:
                reason = f"oblique sagittal: {geom.obliquity_deg:.1f} deg from true sagittal (limit {cfg.max_oblique_deg:g})"
            elif read_stack.get(uid, stack) != stack:
                reason = (f"stack {stack} of a multi-frame series: stack {read_stack[uid]} is the one read "
                          f"(sagittal, most frames)")
            else:
                reason = ""
            rec.ok = not reason
            row["reason"] = reason
        except SpineSSLError as e:
            row["slices"] = len(hs)
            row["reason"] = redact(e.cause, secret, words=True)
            row["orientation_ok"] = "no"
            result.errors.append({"file": redact(os.path.relpath(e.path or ref.path, root), secret),
                                  "stage": "index", "error_type": type(e).__name__,
                                  "message": redact(e.cause, secret, words=True)})
        rec.is_t2, row["t2_by"] = classify_t2(ref.series_description, ref.echo_time, cfg)
        records.append(rec)
    return records


def _stacks_read(groups: dict[tuple, list], cfg: IndexConfig) -> dict[str, str]:
    """Series UID -> label of the stack ``extract`` reads, for series split into several stacks
    (``multiframe.choose_stack``; absent when no stack is usable)."""
    from .multiframe import choose_stack, where_of

    by_uid: dict[str, dict[str, list]] = {}
    for (uid, stack), hs in groups.items():
        by_uid.setdefault(uid, {})[stack] = hs
    out = {}
    for uid, st in by_uid.items():
        if len(st) > 1:
            hs = next(iter(st.values()))
            try:
                out[uid] = choose_stack(st, where_of(hs, None), cfg.spacing_tol_mm, cfg.max_oblique_deg)
            except SpineSSLError:
                pass
    return out


def _image_records(root: Path, table: Path, salt: str, result: IndexResult, cfg: IndexConfig, shard=None):
    """Records for NIfTI/NRRD/MHA files listed in a table (file, subject, date|interval_days)."""
    from .io import is_image_file, obliquity_deg, plane_name, read_image

    rows = read_table(table)
    if not rows:
        raise ManifestError("table has no rows", table)
    cols = set(rows[0])
    if "file" not in cols or "subject" not in cols:
        raise ManifestError("table needs columns 'file' and 'subject' (plus 'date' or 'interval_days')", table)
    records = []
    for r in rows:
        rel = r["file"]
        if shard is not None and not shard.owns(salted_key(salt, "subject:" + r["subject"], prefix="S", n=12)):
            continue
        path = root / rel
        row = {c: "" for c in SERIES_COLUMNS}
        try:
            age = float(r["age"]) if r.get("age", "") != "" else None
        except ValueError:
            age = age_years(r["age"])
        row.update(scan_key=salted_key(salt, "file:" + rel.replace(os.sep, "/")), format="image", n_files=1,
                   t2_by="table", description=r.get("description", ""), sex=sex_label(r.get("sex", "")),
                   age_bin=age_bin(age, cfg.age_bin_edges))
        rec = SeriesRecord(row, [rel], r["subject"], "study:" + rel, r.get("date", ""), None, True)
        rec.family_raw = r.get("family", "")
        rec.row["_interval"] = r.get("interval_days", "")
        try:
            if not is_image_file(path):
                raise InputError("not a NIfTI/NRRD/MHA file", path)
            scan = read_image(path)
            normal = scan.meta.get("acquired_normal") or np.cross(scan.affine[:3, 0], scan.affine[:3, 1])
            sp = scan.spacing
            obl = obliquity_deg(normal)
            row.update(rows=scan.shape[1], columns=scan.shape[2], slices=scan.shape[0],
                       pixel_spacing_mm=f"{_fmt(float(sp[1]))}x{_fmt(float(sp[0]))}", slice_spacing_mm=_fmt(float(sp[2])),
                       orientation=plane_name(normal), obliquity_deg=_fmt(obl, 1))
            if plane_name(normal) != "sagittal" or obl > 30:
                row["orientation_ok"], row["reason"] = "no", f"not sagittal within 30 deg ({obl:.1f} deg)"
            elif scan.shape[0] < 2:
                row["orientation_ok"], row["reason"] = "yes", "single-slice volume"
            else:
                row["orientation_ok"], rec.ok = "yes", True
        except SpineSSLError as e:
            row["reason"] = e.cause
            result.errors.append({"file": rel, "stage": "index", "error_type": type(e).__name__, "message": e.cause})
        records.append(rec)
    return records


def read_table(path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            sample = f.read(4096)
            f.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            return [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()}
                    for r in csv.DictReader(f, dialect=dialect)]
    except OSError as e:
        raise ManifestError(f"cannot read table ({e.strerror or type(e).__name__})", path) from e


def load_families(path) -> dict[str, str]:
    """PatientID (or subject) -> family id from a CSV with an id and a family column."""
    rows = read_table(path)
    if not rows:
        return {}
    cols = list(rows[0])
    idc = next((c for c in ("patient_id", "patientid", "patient", "subject_id", "subject") if c in cols), None)
    fc = next((c for c in ("family_id", "family", "twin_id", "pair_id") if c in cols), None)
    if idc is None or fc is None:
        raise ManifestError("families CSV needs an id column (patient_id/subject_id) and a family column "
                            "(family_id/family/twin_id)", path)
    return {r[idc]: r[fc] for r in rows if r.get(idc) and r.get(fc)}


def _select(records: list[SeriesRecord], cfg: IndexConfig) -> None:
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


def _keys(records: list[SeriesRecord], salt: str, families: dict[str, str]) -> None:
    by_subject: dict[str, list[SeriesRecord]] = {}
    for r in records:
        by_subject.setdefault(r.patient_id, []).append(r)
    for pid, recs in by_subject.items():
        skey = salted_key(salt, "subject:" + pid, prefix="S", n=12)
        fam = families.get(pid) or next((r.family_raw for r in recs if r.family_raw), "")
        fkey = salted_key(salt, "family:" + fam, prefix="F", n=10) if fam else ""
        sel = [r for r in recs if r.row["status"] == "selected"] or recs
        dates = [d for d in (_days(r.study_date) for r in sel) if d is not None]
        first = min(dates) if dates else None
        # time points: distinct study dates of the selected scans (interval_days from a table)
        for r in recs:
            r.row["subject_key"] = skey
            r.row["family"] = fkey
            r.row["study_key"] = salted_key(salt, "study:" + r.study_uid, prefix="T", n=12)
            d = _days(r.study_date)
            if d is not None and first is not None:
                r.row["interval_days"] = (d - first).days
            elif r.row.get("_interval", "") != "":
                try:
                    r.row["interval_days"] = int(float(r.row["_interval"]))
                except ValueError:
                    r.row["interval_days"] = ""
        sel_iv = sorted({r.row["interval_days"] for r in recs
                         if r.row["status"] == "selected" and r.row["interval_days"] != ""})
        for r in recs:
            if r.row["status"] == "selected" and r.row["interval_days"] != "":
                r.row["timepoint"] = sel_iv.index(r.row["interval_days"])
            r.row.pop("_interval", None)


def index_meta(root: str, fmt: str, table, config: dict, n_files: int, n_ignored: int, series: list[dict],
               errors: list[dict]) -> dict:
    """The ``index.json`` of a cohort (one run, or shards merged)."""
    return {"schema": SCHEMA, "root": root, "format": fmt, "table": table, "config": config,
            "n_files": n_files, "n_ignored": n_ignored, "n_series": len(series),
            "n_selected": sum(r["status"] == "selected" for r in series), "n_errors": len(errors)}


def build_index(root, out_dir, config: IndexConfig | None = None, families_csv=None, table=None,
                shard=None) -> IndexResult:
    """Index ``root`` into ``out_dir`` (series.csv, sources.csv, errors.csv, index.json); with a
    ``shard.Shard`` only that shard's subjects, into ``out_dir/shards/index-I-of-N/``."""
    from .io import is_image_file, iter_files

    cfg = config or IndexConfig()
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise InputError("not a folder", root)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() == root.resolve() or root.resolve() in out_dir.resolve().parents:
        raise ConfigError("the output folder must not be inside the input folder", out_dir)
    salt = load_or_create_salt(out_dir)
    families = load_families(families_csv) if families_csv else {}
    result = IndexResult()
    if table is not None:
        records = _image_records(root, Path(table), salt, result, cfg, shard)
        result.n_files = len(records)
    else:
        files = [f for f in iter_files(root)]
        result.n_files = len(files)
        images = [f for f in files if is_image_file(f)]
        if images and len(images) == len(files):
            raise ConfigError("the folder holds NIfTI/NRRD/MHA images only: give the subject/time table "
                              "with --table", root)
        others, secret = [f for f in files if not is_image_file(f)], frozenset()
        if shard is not None:  # this shard's subjects; stray files go by their path's hash
            from .shard import own_files

            images = [f for f in images if shard.owns(file_hash(salt, os.path.relpath(f, root)))]
            others, secret = own_files(others, root, salt, shard)
            result.n_files = len(images) + len(others)
        records = _dicom_records(root, cfg, salt, result, others, secret)
        result.n_ignored += len(images)
    if not records and not result.errors and shard is None:
        raise InputError("no DICOM image series found", root)
    _select(records, cfg)
    _keys(records, salt, families)
    records.sort(key=lambda r: (r.row["subject_key"], r.row["interval_days"] if r.row["interval_days"] != "" else 1 << 30,
                                r.row["scan_key"]))
    result.series = [r.row for r in records]
    result.errors.sort(key=lambda e: (e["file"], e["stage"], e["error_type"], e["message"]))
    sources = [{"scan_key": r.row["scan_key"], "file_hash": file_hash(salt, f)} for r in records for f in r.files]
    meta = index_meta(str(root.resolve()), "image" if table is not None else "dicom",
                      str(Path(table).resolve()) if table is not None else None, dataclasses.asdict(cfg),
                      result.n_files, result.n_ignored, result.series, result.errors)
    man = out_dir
    if shard is not None:
        from .shard import shard_dir

        man = shard_dir(out_dir, "index", shard)
        meta.update(shard=str(shard), salt_id=salt_id(salt))
    atomic.write_csv(man / "series.csv", result.series, SERIES_COLUMNS)
    atomic.write_csv(man / "sources.csv", sources, ["scan_key", "file_hash"])
    atomic.write_csv(man / "errors.csv", result.errors, ERROR_COLUMNS)
    atomic.write_json(man / "index.json", meta)
    return result


# --------------------------------------------------------------------------------------------
# Reading an index back (used by extract)
# --------------------------------------------------------------------------------------------

def read_index(cohort_dir) -> tuple[dict, list[dict]]:
    c = Path(cohort_dir)
    meta_p, series_p = c / "index.json", c / "series.csv"
    if not meta_p.exists() or not series_p.exists():
        raise ManifestError("not an indexed cohort (run `spine-ssl index ROOT --out C` first)", c)
    try:
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ManifestError("index.json is damaged", meta_p) from e
    if meta.get("schema") != SCHEMA:
        raise ManifestError(f"unsupported index schema {meta.get('schema')!r}", meta_p)
    with open(series_p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return meta, rows


def locate_sources(cohort_dir, root=None, scan_keys=None, manifest_dir=None) -> dict[str, list[str]]:
    """scan_key -> absolute file paths, by hashing the paths under ROOT (from index.json unless
    ``root`` is given: the source folder may have moved).  ``manifest_dir``: where index.json and
    sources.csv are (an index shard's folder; default the cohort)."""
    from .io import iter_files

    c = Path(cohort_dir)
    m = Path(manifest_dir) if manifest_dir is not None else c
    meta, _ = read_index(m)
    root = Path(root or meta["root"])
    if not root.is_dir():
        raise InputError("source folder of the index not found (moved? pass --root)", root)
    salt = load_or_create_salt(c)
    want: dict[str, list[str]] = {}  # a multi-frame file may hold several stacks (scan keys)
    with open(m / "sources.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if scan_keys is None or r["scan_key"] in scan_keys:
                want.setdefault(r["file_hash"], []).append(r["scan_key"])
    out: dict[str, list[str]] = {}
    if meta.get("format") == "image" and meta.get("table"):
        rels = [r["file"] for r in read_table(meta["table"])]
        paths = [str(root / r) for r in rels]
    else:
        paths = iter_files(root)
    for p in paths:
        h = file_hash(salt, os.path.relpath(p, root))
        for key in want.get(h, ()):
            out.setdefault(key, []).append(p)
    return out
