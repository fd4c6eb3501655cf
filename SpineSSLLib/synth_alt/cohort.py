"""Write a held-out evaluation cohort: families -> subjects -> visits -> DICOM + truth + labels.

Same output contract as ``spine-ssl synth`` (docs/developer.md "Synthetic cohort layout"):
OUT/cohort.json, OUT/subjects.csv, OUT/dicom/<subject_id>/<visit>/..., OUT/truth/<UID>.json
(schema ``spinessl.synth.truth/1``), OUT/truth/<UID>_labels.nii.gz (SPIDER numbering).  Only the
output writers are shared with the main generator (``synth.dicom.write_series``,
``synth.labels.write_labelmap``, ``synth.writer``: output folder, worker pool, truth levels,
summary counts, the truth schema name); subjects, anatomy, rendering, scanner and header
conventions are this package's own.

Written into a hidden ``.OUT.partial-*`` folder beside OUT, renamed into place at the end; an
error, Ctrl-C or SIGTERM removes it.  Every value derives from the seed (byte-identical files).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np

from .. import DISC_NAMES, __version__, atomic
from ..synth.writer import (LAYOUT, TRUTH_SCHEMA, cohort_summary, run_families, stored_reversed, truth_levels,
                            write_cohort)
from .config import AltConfig

COHORT_SCHEMA = "spinessl.synth_alt.cohort/1"
GENERATOR = "synth_alt"
PURPOSE = ("held-out EVALUATION cohort: never train on it (no training code may read it); it measures "
           "how models trained on the main generator transfer to a structurally different rendering")
UID_ROOT = "1.2.826.0.1.3680043.10.1453.77."
_BASE_DATE = _dt.date(2003, 3, 1)
SUBJECT_COLUMNS = ["subject_id", "family_id", "n_visits", "graded", "sex", "patient_id"]


def _uid(cfg: AltConfig, *parts) -> str:
    h = hashlib.sha256(("|".join(map(str, ("alt", cfg.seed, *parts)))).encode()).digest()
    return UID_ROOT + str(int.from_bytes(h[:13], "big"))


def _hash_int(cfg: AltConfig, *parts) -> int:
    return int(hashlib.sha256(("|".join(map(str, ("alt", cfg.seed, *parts)))).encode()).hexdigest()[:12], 16)


def family_plan(cfg: AltConfig) -> list[tuple[int, int, int]]:
    n_pairs = min(int(round(cfg.twin_fraction * cfg.subjects / 2)), cfg.subjects // 2)
    sizes = [2] * n_pairs + [1] * (cfg.subjects - 2 * n_pairs)
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, 77_000, 99])).permutation(len(sizes))
    plan, s = [], 0
    for f, i in enumerate(order):
        plan.append((f, s, sizes[i]))
        s += sizes[i]
    return plan


def patient_id(cfg: AltConfig, s) -> str:
    return f"HX{_hash_int(cfg, s.subject_id, 'pid') % 10**8:08d}"


def _header(cfg, s, va, p, g_info, date: _dt.date, birth: _dt.date, series_number: int, dk: float) -> dict:
    from .protocol import VENDORS

    v = VENDORS[p.vendor]
    acc = _hash_int(cfg, s.subject_id, va.visit, "acc")
    Mj, Mi = g_info["acquired"]
    if p.phase_axis == 0:  # phase encoding along the column direction (the row index j)
        acq_matrix, ped = [0, Mi, Mj, 0], "COL"
    else:
        acq_matrix, ped = [Mj, 0, 0, Mi], "ROW"
    return {
        "PatientID": patient_id(cfg, s),
        "PatientName": f"Holdout^Person{s.index + 1:04d}",
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientSex": s.sex,
        "PatientAge": f"{int(va.age):03d}Y",
        "PatientWeight": f"{va.weight:.0f}",
        "PatientPosition": p.position,
        "StudyDate": date.strftime("%Y%m%d"),
        "SeriesDate": date.strftime("%Y%m%d"),
        "AcquisitionDate": date.strftime("%Y%m%d"),
        "StudyTime": f"{8 + acc % 10:02d}{acc % 60:02d}00",
        "StudyID": f"{acc % 100000}",
        "AccessionNumber": f"HA{acc % 10**10:010d}",
        "InstitutionName": f"Holdout Imaging Centre {'ABC'[acc % 3]}",
        "StationName": f"HOLDOUT{p.vendor}{int(p.field_strength * 10):02d}",
        "StudyDescription": ("MRI L-SPINE W/O", "Lumbar spine", "LWS nativ")[acc % 3],
        "SeriesDescription": p.description,
        "ProtocolName": p.description.replace(" ", "_"),
        "SeriesNumber": series_number,
        "BodyPartExamined": ("LSPINE", "SPINE", "LUMBAR SPINE")[p.vendor],
        "Manufacturer": v["name"],
        "ManufacturerModelName": v["models"][p.field_strength],
        "SoftwareVersions": v["software"],
        "MagneticFieldStrength": f"{p.field_strength:g}",
        "ImagedNucleus": "1H",
        "ScanningSequence": "SE",
        "SequenceVariant": ["SK", "SP"],
        "ScanOptions": "FS" if p.fat_sat else "",
        "MRAcquisitionType": "2D",
        "EchoTime": f"{p.te:.2f}",
        "RepetitionTime": f"{p.tr:.1f}",
        "EchoTrainLength": p.etl,
        "FlipAngle": "150" if p.vendor == 0 else "90",
        "NumberOfAverages": "2" if p.field_strength < 1.25 else "1",
        "PixelBandwidth": f"{150 + 10 * (acc % 20)}",
        "AcquisitionMatrix": acq_matrix,
        "InPlanePhaseEncodingDirection": ped,
        "SliceThickness": f"{p.thickness:g}",
        "SpacingBetweenSlices": f"{dk:.4g}",
    }


def _store(arr: np.ndarray, p, csf: float, r: np.random.Generator):
    """Scale to the vendor's pixel storage: 12-bit or 16-bit integers, or floating point (the
    writer stores it with a rescale slope)."""
    if p.storage == "u12":
        x = np.clip(np.round(arr * (4095 * r.uniform(0.45, 0.75) / csf)), 0, 4095).astype(np.uint16)
    elif p.storage == "u16":
        x = np.clip(np.round(arr * (r.uniform(2000, 20000) / csf)), 0, 65535).astype(np.uint16)
    else:
        x = (arr * (r.uniform(100, 3000) / csf)).astype(np.float32)
    lo, hi = np.percentile(x, [1, 99.5])
    return x, {"WindowCenter": f"{(lo + hi) / 2:.0f}", "WindowWidth": f"{max(hi - lo, 1):.0f}"}


def _job(args):
    cfg_dict, fam, first, size, root = args
    return _write_family(AltConfig.from_dict(cfg_dict), fam, first, size, Path(root))


def _write_family(cfg: AltConfig, fam: int, first: int, size: int, root: Path) -> list[dict]:
    from ..synth.dicom import write_series
    from ..synth.labels import write_labelmap
    from . import protocol, subject
    from .render import render_visit

    cdf = subject.grade_cdf()
    rows = []
    for s in subject.make_family(cfg, fam, first, size):
        r = subject.rng(cfg.seed, 60_000_000 + s.index)
        base_date = _BASE_DATE + _dt.timedelta(days=int(r.integers(0, 8 * 365)))
        birth = base_date - _dt.timedelta(days=int(round(s.baseline_age * 365.25)))
        scans = []
        for k in range(s.n_visits):
            va = subject.visit(cfg, s, k, cdf)
            p = protocol.draw(cfg, s, k)
            out = render_visit(va, p, cfg.max_matrix)
            interval = int(round(va.years * 365.25))
            date = base_date + _dt.timedelta(days=interval)
            study_uid, series_uid = _uid(cfg, s.subject_id, k, "study"), _uid(cfg, s.subject_id, k, "series")
            K = out.array.shape[0]
            dk = float(np.linalg.norm(out.affine[:3, 2]))
            header = _header(cfg, s, va, p, out.info, date, birth, int(r.integers(2, 12)), dk)
            header["FrameOfReferenceUID"] = _uid(cfg, s.subject_id, k, "frame")
            arr, win = _store(out.array, p, out.info["csf_signal"], subject.rng(p.seed, 3))
            header.update(win)
            aff = out.affine
            if p.stored_reversed:  # instance 1 is the last slice along the normal
                arr, aff = stored_reversed(arr, aff)
            write_series(root / "dicom" / s.subject_id / str(k), arr, aff, header, series_uid=series_uid,
                         study_uid=study_uid, file_names=protocol.file_names(p, K, series_uid))
            label_name = f"{series_uid}_labels.nii.gz"
            write_labelmap(root / "truth" / label_name, out.labels, out.affine)
            discs = []
            for i, name in enumerate(DISC_NAMES):
                up, lo = name.split("-")
                discs.append({"name": name, "grade": va.grades[i], "score": round(float(va.latent[i]), 4),
                              "appearance": round(float(va.appearance[i]), 4), "true_grade": va.true_grades[i],
                              "centroid_lps": [round(float(v), 4) for v in out.discs[name]],
                              "in_fov": up in out.levels and lo in out.levels})
            truth = {
                "schema": TRUTH_SCHEMA, "generator": GENERATOR, "evaluation_only": True,
                "subject_id": s.subject_id, "family_id": s.family_id, "visit": k,
                "interval_days": interval, "field_strength": p.field_strength,
                "study_instance_uid": study_uid, "series_instance_uid": series_uid,
                "dicom_dir": f"dicom/{s.subject_id}/{k}", "age_years": round(va.age, 2), "sex": s.sex,
                "shape": list(out.array.shape), "affine_lps": [[round(float(v), 6) for v in row] for row in out.affine],
                "levels": truth_levels(out.levels, "synthetic ground truth (held-out generator)"), "discs": discs, "labelmap": label_name,
                "levels_outside_fov": out.outside, "vertebrae_visible": out.visible,
                "acquisition": {**{k2: v2 for k2, v2 in out.info.items() if k2 != "csf_signal"},
                                "vendor": header["Manufacturer"], "fat_suppressed": p.fat_sat,
                                "orientation_convention": int(p.convention), "stored_reversed": p.stored_reversed,
                                "noise": p.noise, "apodisation": p.apod, "ghosting": p.ghost > 0,
                                "echo_time_ms": round(p.te, 1), "storage": p.storage,
                                "top_vertebra": p.top_vertebra},
                "fingerprint": va.fingerprint(),
            }
            atomic.write_json(root / "truth" / f"{series_uid}.json", truth)
            scans.append({"grades": va.grades, "field_strength": p.field_strength, "fat_sat": p.fat_sat,
                          "visible": out.visible, "outside": out.outside})
        rows.append({"subject_id": s.subject_id, "family_id": s.family_id, "n_visits": s.n_visits,
                     "graded": int(s.graded), "sex": s.sex, "patient_id": patient_id(cfg, s), "scans": scans})
    return rows


def generate_cohort(out_dir, config: AltConfig | None = None, overwrite: bool = False, workers: int = 1) -> dict:
    """Write a held-out evaluation cohort into ``out_dir``; returns the summary (also in cohort.json)."""
    cfg = (config or AltConfig()).validate()
    return write_cohort(out_dir, overwrite, workers, lambda tmp: _generate(cfg, tmp, workers))


def _generate(cfg: AltConfig, tmp: Path, workers: int) -> dict:
    jobs = [(cfg.to_dict(), f, s, n, str(tmp)) for f, s, n in family_plan(cfg)]
    subjects = run_families(_job, jobs, workers, cfg.subjects, "synth-alt subjects")
    summary = _summary(subjects)
    atomic.write_csv(tmp / "subjects.csv", [{k: r[k] for k in SUBJECT_COLUMNS} for r in subjects], SUBJECT_COLUMNS)
    atomic.write_json(tmp / "cohort.json", {
        "schema": COHORT_SCHEMA, "truth_schema": TRUTH_SCHEMA, "generator": f"SpineSSL {__version__} {GENERATOR}",
        "purpose": PURPOSE, "evaluation_only": True, "seed": cfg.seed, "config": cfg.to_dict(), "summary": summary,
        "layout": LAYOUT,
        "label_convention": "SPIDER: vertebrae from the bottom (L5=1 ... T12=6, T11=7, T10=8, T9=9, T8=10), "
                            "S1=26 (SpineSSL), discs L5-S1=201 ... T12-L1=206 ... T8-T9=210, canal=100",
        "grade_mapping": "Pfirrmann 1-2 -> 1, 3 -> 2, 4 -> 3, 5 -> 4 (SPIDER frequencies per disc at baseline)",
    })
    return summary


def _summary(subjects: list[dict]) -> dict:
    """``writer.cohort_summary`` plus this generator's acquisition counts."""
    vis, top = Counter(), Counter()
    n_fs = 0
    for s in subjects:
        for sc in s["scans"]:
            n_fs += int(sc["fat_sat"])
            vis[str(sum(1 for v in sc["visible"] if v != "S1"))] += 1
            top[next((v for v in sc["visible"] if v != "S1"), "none")] += 1
    return cohort_summary(subjects, {
        "fat_suppressed_scans": n_fs,
        "mobile_vertebrae_visible": dict(sorted(vis.items(), key=lambda kv: int(kv[0]))),
        "top_visible_vertebra": dict(sorted(top.items())),
    })
