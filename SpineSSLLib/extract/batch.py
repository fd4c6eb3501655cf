"""Batch extraction (``spine-ssl extract``): every selected scan of an indexed cohort, in worker
processes, resumable, with ``scans.csv``, ``volumes.csv`` and ``errors.csv`` manifests."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from dataclasses import dataclass, field


from .. import DISC_NAMES, LEVEL_NAMES
from ..levels.sources import LevelSource, load_grades_csv
from .files import save_volumes
from .qc import qc_figure
from .volumes import ExtractConfig, extract_scan


SCAN_COLUMNS = ["scan_key", "subject_key", "status", "n_vb", "n_ivd", "missing", "issues", "error"]
VOLUME_COLUMNS = ["volume_id", "scan_key", "subject_key", "family", "timepoint", "interval_days",
                  "field_strength", "level", "kind", "grade", "file", "index", "mid_slice", "width_mm",
                  "levels_source", "sex", "age_bin"]


def _load_truth_family(path) -> str:
    with open(path, encoding="utf-8") as f:
        return str(json.load(f).get("family_id") or "")


def _process(job: dict) -> dict:
    """Extract one scan (runs in a worker process). Never raises for bad input."""
    import traceback

    from ..errors import SpineSSLError
    from ..privacy import identifiers, redact, redact_error
    from ..io import read_dicom_series, read_header, read_scan

    key = job["scan_key"]
    secret: set[str] = set()
    res = {"scan_key": key, "status": "failed", "file": f"scan {key}", "stage": "extract", "error_type": "",
           "message": "", "n_vb": 0, "n_ivd": 0, "issues": []}
    try:
        if job.get("threads"):
            import torch

            torch.set_num_threads(job["threads"])
        cfg = ExtractConfig(**job["config"])
        files = job["files"]
        res["stage"] = "read"
        if job["format"] == "dicom":
            headers = [h for h in (read_header(f) for f in files) if h is not None]
            secret = identifiers(headers)
            scan = read_dicom_series(files, headers=headers, max_oblique_deg=job["max_oblique_deg"],
                                     spacing_tol=job["spacing_tol_mm"])
            keys = [key, scan.meta.get("series_instance_uid", "")]
        else:
            scan = read_scan(files[0], max_oblique_deg=job["max_oblique_deg"])
            stem = os.path.basename(files[0]).split(".")[0]
            keys = [key, stem, "spider:" + stem.split("_")[0]]
        scan.meta["source"] = f"scan {key}"
        res["stage"] = "levels"
        src = LevelSource(**job["levels"])
        levels, level_file = src.load(scan, keys, device=cfg.device)
        res["stage"] = "extract"
        sv = extract_scan(scan, levels, cfg)
        meta = dict(job["row"])
        if src.kind == "truth" and not meta.get("family"):
            fam = _load_truth_family(level_file)
            if fam:
                from ..privacy import salted_key

                meta["family"] = salted_key(job["salt"], "family:" + fam, prefix="F", n=10)
        grades: dict[str, int] = {}
        if job.get("grades") == "truth" and src.kind == "truth":
            from ..levels import truth_grades

            grades = truth_grades(level_file)
        elif job.get("grades_table") is not None:
            grades = next((job["grades_table"][k] for k in keys if k in job["grades_table"]), {})
        res["stage"] = "write"
        vol_rel = f"volumes/{key}.npz"
        save_volumes(os.path.join(job["cohort"], vol_rel), sv, scan.affine, scan.shape)
        rows = []
        for kind, names, present, mids in (("VB", sv.levels, sv.vb_present, sv.vb_mid_slice),
                                           ("IVD", sv.discs, sv.ivd_present, sv.ivd_mid_slice)):
            for i, name in enumerate(names):
                if not present[i]:
                    continue
                width = float(sv.vb_width_mm[i]) if kind == "VB" else \
                    float(0.5 * (sv.vb_width_mm[i] + sv.vb_width_mm[i + 1]))
                rows.append({"volume_id": f"{key}_{name}", "scan_key": key, "subject_key": meta["subject_key"],
                             "family": meta["family"], "timepoint": meta["timepoint"],
                             "interval_days": meta["interval_days"], "field_strength": meta["field_strength"],
                             "level": name, "kind": kind, "grade": grades.get(name, "") if kind == "IVD" else "",
                             "file": vol_rel, "index": i, "mid_slice": int(mids[i]), "width_mm": round(width, 2),
                             "levels_source": src.kind, "sex": meta.get("sex", ""),
                             "age_bin": meta.get("age_bin", "")})
        issues = [redact(s, secret, words=True) for s in sv.issues]
        if job.get("qc"):
            qc_figure(os.path.join(job["cohort"], "qc", f"{key}.png"), scan, levels, sv, title=f"{key}")
        from .. import atomic

        atomic.write_json(os.path.join(job["cohort"], "volumes", f"{key}.json"),
                          {"scan_key": key, "levels_source": src.kind, "rows": rows, "issues": issues,
                           "config": job["config"]})
        res.update(status="ok", n_vb=int(sv.vb_present.sum()), n_ivd=int(sv.ivd_present.sum()), issues=issues)
    except SpineSSLError as e:
        res.update(error_type=type(e).__name__, message=redact_error(e, secret))
        if e.path and os.path.exists(e.path):
            res["file"] = redact(os.path.relpath(e.path, job["root"]) if job.get("root") else e.path, secret)
        if job.get("debug"):
            res["traceback"] = redact(traceback.format_exc(), secret)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # an unexpected failure on one scan must not stop the batch
        res.update(error_type=type(e).__name__, message=redact(f"unexpected error: {e}", secret))
        res["traceback"] = redact(traceback.format_exc(), secret)
    return res


@dataclass
class ExtractSummary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    results: list = field(default_factory=list)
    n_volumes: int = 0


def write_manifests(cohort_dir, all_sel: list[dict], failed: dict[str, str], out_dir) -> tuple[int, list[dict]]:
    """``volumes.csv`` and ``scans.csv`` in ``out_dir`` for the selected index rows ``all_sel``,
    from the scans' sidecars in ``cohort_dir/volumes`` (finished scans of this and earlier runs);
    ``failed``: scan_key -> "ErrorType: message".  Returns (number of volumes, scan rows)."""
    from .. import atomic

    c = os.fspath(cohort_dir)
    vol_rows, scan_rows = [], []
    for r in all_sel:
        side = os.path.join(c, "volumes", f"{r['scan_key']}.json")
        row = {"scan_key": r["scan_key"], "subject_key": r["subject_key"], "status": "not extracted",
               "n_vb": 0, "n_ivd": 0, "missing": "", "issues": "", "error": ""}
        if os.path.exists(side) and os.path.exists(side[:-5] + ".npz"):
            with open(side, encoding="utf-8") as f:
                doc = json.load(f)
            vol_rows.extend(doc["rows"])
            have = {v["level"] for v in doc["rows"]}
            row.update(status="ok", n_vb=sum(v["kind"] == "VB" for v in doc["rows"]),
                       n_ivd=sum(v["kind"] == "IVD" for v in doc["rows"]),
                       missing=" ".join(n for n in LEVEL_NAMES + DISC_NAMES if n not in have),
                       issues="; ".join(doc.get("issues", [])))
        elif r["scan_key"] in failed:
            row.update(status="failed", error=failed[r["scan_key"]])
        scan_rows.append(row)
    atomic.write_csv(os.path.join(out_dir, "volumes.csv"), vol_rows, VOLUME_COLUMNS)
    atomic.write_csv(os.path.join(out_dir, "scans.csv"), scan_rows, SCAN_COLUMNS)
    return len(vol_rows), scan_rows


def run_extraction(cohort_dir, levels: LevelSource, config: ExtractConfig | None = None, workers: int = 1,
                   qc: bool = False, grades: str | None = None, root=None, overwrite: bool = False,
                   debug: bool = False, limit: int | None = None, shard=None) -> ExtractSummary:
    """Extract every selected scan of an indexed cohort; resumable, parallel, never stops on a
    bad scan.  ``grades``: 'truth' (from the truth files) or a grades CSV path.  ``shard``
    (``shard.Shard``): only its subjects, manifests into ``C/shards/extract-I-of-N/`` (see
    ``shard.py``)."""
    import concurrent.futures as cf
    import contextlib
    import glob
    import multiprocessing as mp

    from .. import atomic, progress
    from ..index import ERROR_COLUMNS, locate_sources, read_index
    from ..privacy import load_or_create_salt

    cfg = config or ExtractConfig()
    c = os.fspath(cohort_dir)
    man_in, man_out = c, c
    if shard is not None:
        from ..shard import shard_dir

        own_index = shard_dir(c, "index", shard)
        man_in = os.fspath(own_index) if (own_index / "index.json").is_file() else c
        man_out = os.fspath(shard_dir(c, "extract", shard))
    meta, rows = read_index(man_in)
    all_sel = [r for r in rows if r["status"] == "selected" and (shard is None or shard.owns(r["subject_key"]))]
    sel = all_sel[:limit] if limit else all_sel
    todo, summary = [], ExtractSummary()
    for r in sel:
        done = os.path.exists(os.path.join(c, "volumes", f"{r['scan_key']}.npz")) and \
            os.path.exists(os.path.join(c, "volumes", f"{r['scan_key']}.json"))
        if done and not overwrite:
            summary.skipped += 1
        else:
            todo.append(r)
            # temporaries of this scan left by a killed run (no other process writes this scan)
            for sub in ("volumes", "qc"):
                for tmp in glob.glob(os.path.join(glob.escape(os.path.join(c, sub)), f".{r['scan_key']}.*")):
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
    grades_table = None
    if grades and grades != "truth":
        grades_table = load_grades_csv(grades)
    if grades is None and levels.kind == "truth":
        grades = "truth"
    sources = locate_sources(c, root, {r["scan_key"] for r in todo}, man_in) if todo else {}
    # worker processes share the cores; in-process (one worker) the caller's torch thread
    # setting is used and left as it was
    n_threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if workers > 1 else None
    icfg = meta.get("config", {})
    salt = load_or_create_salt(c)
    jobs, missing = [], []
    for r in todo:
        files = sources.get(r["scan_key"])
        if not files:
            missing.append({"scan_key": r["scan_key"], "status": "failed", "file": f"scan {r['scan_key']}",
                            "stage": "read", "error_type": "InputError",
                            "message": "source files of this scan not found under the index root", "issues": []})
            continue
        jobs.append({"scan_key": r["scan_key"], "files": files, "format": r["format"], "cohort": c,
                     "levels": dataclasses.asdict(levels), "config": dataclasses.asdict(cfg),
                     "grades": grades, "grades_table": grades_table, "qc": qc, "debug": debug,
                     "threads": n_threads, "salt": salt, "root": str(root or meta["root"]), "max_oblique_deg": float(icfg.get("max_oblique_deg", 30.0)),
                     "spacing_tol_mm": float(icfg.get("spacing_tol_mm", 0.05)),
                     "row": {k: r.get(k, "") for k in ("subject_key", "family", "timepoint", "interval_days",
                                                        "field_strength", "sex", "age_bin")}})
    results = list(missing)
    with progress.Progress(len(jobs), desc="extracting", unit="scan") as bar:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(_process(job))
                bar.update(1)
        else:
            if "forkserver" in mp.get_all_start_methods():
                # workers fork from a server that imported torch once and never ran a torch op
                # (fork-safe for OpenMP and CUDA), instead of each spawned worker importing it
                ctx = mp.get_context("forkserver")
                ctx.set_forkserver_preload(["SpineSSLLib.extract", "SpineSSLLib.io", "torch", "pydicom"])
            else:
                ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futs = [pool.submit(_process, j) for j in jobs]
                try:
                    for f in cf.as_completed(futs):
                        results.append(f.result())
                        bar.update(1)
                except KeyboardInterrupt:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    for res in results:
        if res["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
    summary.results = results
    # manifest of every extracted volume (finished scans from this and earlier runs)
    failures = sorted(({"file": x["file"], "stage": x["stage"], "error_type": x["error_type"], "message": x["message"]}
                       for x in results if x["status"] != "ok"),
                      key=lambda e: (e["file"], e["stage"], e["error_type"], e["message"]))
    failed = {x["scan_key"]: f"{x['error_type']}: {x['message']}" for x in results if x["status"] != "ok"}
    summary.n_volumes, _ = write_manifests(c, all_sel, failed, man_out)
    if shard is not None:  # the shard's failures only; `spine-ssl merge` adds the index's rows
        from ..privacy import salt_id

        atomic.write_csv(os.path.join(man_out, "errors.csv"), failures, ERROR_COLUMNS)
        atomic.write_json(os.path.join(man_out, "shard.json"), {"shard": str(shard), "salt_id": salt_id(salt),
                                                               "config": dataclasses.asdict(cfg)})
        return summary
    # errors table (contract: C/errors.csv): the index's rows are kept, extraction failures of
    # this run replace those of earlier runs (scans that failed before are retried each run)
    err_path = os.path.join(c, "errors.csv")
    kept = []
    if os.path.exists(err_path):
        with open(err_path, newline="", encoding="utf-8") as f:
            kept = [r for r in csv.DictReader(f) if r.get("stage") == "index"]
    atomic.write_csv(err_path, kept + failures, ERROR_COLUMNS)
    return summary
