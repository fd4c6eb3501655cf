"""The index's files: ``series.csv`` / ``errors.csv`` columns, ``index.json``, and reading them back
(``read_index``, ``locate_sources``: scan_key -> files, by hashing the paths under ROOT); the
tables the user gives (``read_table``, ``load_families``)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ..errors import InputError, ManifestError
from ..privacy import file_hash, load_or_create_salt

SCHEMA = "spinessl.index/1"
SERIES_COLUMNS = [
    "scan_key", "subject_key", "study_key", "timepoint", "interval_days", "family", "status", "reason",
    "format", "description", "t2_by", "echo_time_ms", "field_strength", "manufacturer", "rows", "columns",
    "slices", "pixel_spacing_mm", "slice_spacing_mm", "slice_thickness_mm", "orientation", "obliquity_deg",
    "orientation_ok", "n_files", "sex", "age_bin",
]
ERROR_COLUMNS = ["file", "stage", "error_type", "message"]


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


def index_meta(root: str, fmt: str, table, config: dict, n_files: int, n_ignored: int, series: list[dict],
               errors: list[dict]) -> dict:
    """The ``index.json`` of a cohort (one run, or shards merged)."""
    return {"schema": SCHEMA, "root": root, "format": fmt, "table": table, "config": config,
            "n_files": n_files, "n_ignored": n_ignored, "n_series": len(series),
            "n_selected": sum(r["status"] == "selected" for r in series), "n_errors": len(errors)}


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
    from ..io import iter_files

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
