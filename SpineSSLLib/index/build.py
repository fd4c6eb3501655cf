"""``build_index``: one record per series (DICOM headers, or a table of NIfTI/NRRD/MHA files),
selection, pseudonymous keys and time points, written as the cohort's manifests."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import ConfigError, InputError, ManifestError, SpineSSLError
from ..privacy import file_hash, identifiers, load_or_create_salt, redact, salt_id, salted_key
from .manifests import ERROR_COLUMNS, SERIES_COLUMNS, index_meta, load_families, read_table
from .rules import IndexConfig, SeriesRecord, _days, age_bin, age_years, classify_t2, select_series, sex_label

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
    from .. import progress
    from ..io import read_header, series_geometry
    from ..multiframe import expand_frames, files_of, where_of

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
    from ..multiframe import choose_stack, where_of

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
    from ..io import is_image_file, obliquity_deg, plane_name, read_image

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


def build_index(root, out_dir, config: IndexConfig | None = None, families_csv=None, table=None,
                shard=None) -> IndexResult:
    """Index ``root`` into ``out_dir`` (series.csv, sources.csv, errors.csv, index.json); with a
    ``shard.Shard`` only that shard's subjects, into ``out_dir/shards/index-I-of-N/``."""
    from ..io import is_image_file, iter_files

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
            from ..shard import own_files

            images = [f for f in images if shard.owns(file_hash(salt, os.path.relpath(f, root)))]
            others, secret = own_files(others, root, salt, shard)
            result.n_files = len(images) + len(others)
        records = _dicom_records(root, cfg, salt, result, others, secret)
        result.n_ignored += len(images)
    if not records and not result.errors and shard is None:
        raise InputError("no DICOM image series found", root)
    select_series(records, cfg)
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
        from ..shard import shard_dir

        man = shard_dir(out_dir, "index", shard)
        meta.update(shard=str(shard), salt_id=salt_id(salt))
    atomic.write_csv(man / "series.csv", result.series, SERIES_COLUMNS)
    atomic.write_csv(man / "sources.csv", sources, ["scan_key", "file_hash"])
    atomic.write_csv(man / "errors.csv", result.errors, ERROR_COLUMNS)
    atomic.write_json(man / "index.json", meta)
    return result
