"""Generate a whole synthetic cohort: families -> subjects -> visits -> DICOM + truth + labels.

Layout (docs/developer.md "Synthetic cohort layout"):
  OUT/cohort.json, OUT/subjects.csv, OUT/dicom/<subject_id>/<visit>/..., OUT/truth/<UID>.json,
  OUT/truth/<UID>_labels.nii.gz

Subjects are generated and written one family at a time (memory does not grow with the number
of subjects), optionally in worker processes; the output is written into a hidden temporary
folder beside OUT and renamed into place at the end, so a failed or interrupted run leaves
nothing half-written (``writer``: the output code every generator shares).  Every value (UIDs, fake IDs, dates) derives from the seed: the same seed
gives byte-identical files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

import numpy as np

from .. import DISC_NAMES, __version__, atomic
from .config import SynthConfig
from .writer import LAYOUT, TRUTH_SCHEMA, cohort_summary, run_families, stored_reversed, truth_levels, write_cohort

COHORT_SCHEMA = "spinessl.synth.cohort/1"
UID_ROOT = "1.2.826.0.1.3680043.10.1453."  # synthetic-data UIDs (pydicom-style root + project arc)
_BASE_DATE = _dt.date(1996, 1, 1)


def _uid(cfg: SynthConfig, *parts) -> str:
    h = hashlib.sha256(("|".join(map(str, (cfg.seed, *parts)))).encode()).digest()
    return UID_ROOT + str(int.from_bytes(h[:14], "big"))


def family_plan(cfg: SynthConfig) -> list[tuple[int, int, int]]:
    """(family index, first subject index, family size) for the whole cohort."""
    n_twin_pairs = int(round(cfg.twin_fraction * cfg.subjects / 2))
    n_twin_pairs = min(n_twin_pairs, cfg.subjects // 2)
    plan, s, f = [], 0, 0
    sizes = [2] * n_twin_pairs + [1] * (cfg.subjects - 2 * n_twin_pairs)
    order = np.random.default_rng(np.random.SeedSequence([cfg.seed, 99])).permutation(len(sizes))
    for i in order:
        plan.append((f, s, sizes[i]))
        s += sizes[i]
        f += 1
    return plan


def _header(cfg, sa, va, acq, visit_date: _dt.date, series_number: int, birth_date: _dt.date) -> dict:
    """The DICOM attributes of one series.  Like a real export it carries identifying values
    (PatientID, PatientName, birth and study dates, accession number, institution) -- fake, but
    the privacy audit (``spine-ssl audit-outputs``) has something real to search for."""
    pid = "ANON" + hashlib.sha256(f"{cfg.seed}|{sa.subject_id}|pid".encode()).hexdigest()[:10].upper()
    acc = int(hashlib.sha256(f"{cfg.seed}|{sa.subject_id}|{va.visit}|acc".encode()).hexdigest()[:12], 16)
    return {
        "PatientID": pid,
        "PatientName": "Anonymous^" + pid[-6:],
        "PatientBirthDate": birth_date.strftime("%Y%m%d"),
        "PatientSex": sa.sex,
        "PatientAge": f"{int(va.age):03d}Y",
        "PatientWeight": f"{va.weight:.1f}",
        "PatientPosition": "HFS",
        "StudyDate": visit_date.strftime("%Y%m%d"),
        "SeriesDate": visit_date.strftime("%Y%m%d"),
        "StudyTime": "100000",
        "StudyID": f"{va.visit + 1}",
        "AccessionNumber": f"ACC{acc % 10**9:09d}",
        "InstitutionName": f"Synthetic Spine Clinic {'North' if acq.field_strength < 1.25 else 'South'}",
        "StudyDescription": "LUMBAR SPINE",
        "SeriesDescription": "SAG T2 TSE",
        "SeriesNumber": series_number,
        "BodyPartExamined": "LSPINE",
        "Manufacturer": "SpineSSL synthetic",
        "ManufacturerModelName": f"Synth {acq.field_strength:.1f}T",
        "MagneticFieldStrength": f"{acq.field_strength:.1f}",
        "ImagedNucleus": "1H",
        "ScanningSequence": "SE",
        "SequenceVariant": "SK",
        "MRAcquisitionType": "2D",
        "EchoTime": f"{acq.echo_time:.1f}",
        "RepetitionTime": f"{acq.repetition_time:.0f}",
        "EchoTrainLength": 21,
        "SliceThickness": f"{acq.thickness:g}",
        "SpacingBetweenSlices": f"{acq.between:g}",
        "WindowCenter": f"{0.55 * acq.intensity_scale:.0f}",
        "WindowWidth": f"{1.2 * acq.intensity_scale:.0f}",
    }


def _file_names(acq, K: int, sop_uids: list[str]) -> list[str]:
    if acq.naming == 0:
        return [f"IM{k + 1:04d}.dcm" for k in range(K)]
    if acq.naming == 1:
        return [f"slice_{k + 1:03d}" for k in range(K)]
    return [f"MR.{u}.dcm" for u in sop_uids]


def _subject_job(args):
    cfg_dict, fam_index, first, size, root = args
    cfg = SynthConfig.from_dict(cfg_dict)
    return _write_family(cfg, fam_index, first, size, Path(root))


def _write_family(cfg: SynthConfig, fam_index: int, first: int, size: int, root: Path) -> list[dict]:
    from . import anatomy, render
    from .dicom import write_series
    from .labels import write_labelmap

    thresholds = anatomy.score_thresholds(cfg)
    rows = []
    for sa in anatomy.make_family(cfg, fam_index, first, size):
        r = np.random.default_rng(np.random.SeedSequence([cfg.seed, 50_000_000 + sa.index]))
        base_date = _BASE_DATE + _dt.timedelta(days=int(r.integers(0, 6 * 365)))
        birth_date = base_date - _dt.timedelta(days=int(round(sa.baseline_age * 365.25)))
        scans = []
        for visit in range(sa.n_visits):
            va = anatomy.visit_anatomy(cfg, sa, visit, thresholds)
            acq = anatomy.acquisition(cfg, sa, visit)
            out = render.render(va, acq, cfg.seed)
            interval_days = int(round(va.years * 365.25))
            date = base_date + _dt.timedelta(days=interval_days)
            study_uid = _uid(cfg, sa.subject_id, visit, "study")
            series_uid = _uid(cfg, sa.subject_id, visit, "series")
            K = out.array.shape[0]
            from pydicom.uid import generate_uid

            sop = [generate_uid(entropy_srcs=["sop", series_uid, str(k)]) for k in range(K)]
            names = _file_names(acq, K, sop)
            header = _header(cfg, sa, va, acq, date, 1 + visit, birth_date)
            header["FrameOfReferenceUID"] = _uid(cfg, sa.subject_id, visit, "frame")
            arr, aff = out.array, out.affine
            if acq.flipped:  # stored left-to-right: instance 1 is the last slice along the normal
                arr, aff = stored_reversed(arr, aff)
            write_series(root / "dicom" / sa.subject_id / str(visit), arr, aff, header,
                         series_uid=series_uid, study_uid=study_uid, file_names=names)
            label_name = f"{series_uid}_labels.nii.gz"
            write_labelmap(root / "truth" / label_name, out.labels, out.affine)
            discs = []
            for i, name in enumerate(DISC_NAMES):
                c = out.discs[name]
                discs.append({"name": name, "grade": va.grades[i], "score": round(float(va.scores[i]), 4),
                              "appearance": round(float(va.appearance[i]), 4), "true_grade": va.true_grades[i],
                              "centroid_lps": [round(float(v), 4) for v in c]})
            truth = {
                "schema": TRUTH_SCHEMA, "subject_id": sa.subject_id, "family_id": sa.family_id, "visit": visit,
                "interval_days": interval_days, "field_strength": acq.field_strength,
                "study_instance_uid": study_uid, "series_instance_uid": series_uid,
                "dicom_dir": f"dicom/{sa.subject_id}/{visit}",
                "age_years": round(va.age, 2), "sex": sa.sex,
                "shape": list(out.array.shape), "affine_lps": [[round(float(v), 6) for v in row] for row in out.affine],
                "levels": truth_levels(out.levels, "synthetic ground truth"), "discs": discs, "labelmap": label_name,
                "fingerprint": va.fingerprint(),
            }
            atomic.write_json(root / "truth" / f"{series_uid}.json", truth)
            scans.append({"grades": va.grades, "field_strength": acq.field_strength})
        rows.append({"subject_id": sa.subject_id, "family_id": sa.family_id, "n_visits": sa.n_visits,
                     "graded": int(sa.graded), "sex": sa.sex, "scans": scans})
    return rows


def generate_cohort(out_dir, config: SynthConfig | None = None, overwrite: bool = False, workers: int = 1) -> dict:
    """Write a synthetic cohort into ``out_dir``; returns the summary (also in cohort.json)."""
    cfg = (config or SynthConfig()).validate()
    return write_cohort(out_dir, overwrite, workers, lambda tmp: _generate(cfg, tmp, workers))


def _generate(cfg: SynthConfig, tmp: Path, workers: int) -> dict:
    jobs = [(cfg.to_dict(), f, s, n, str(tmp)) for f, s, n in family_plan(cfg)]
    subjects = run_families(_subject_job, jobs, workers, cfg.subjects, "synth subjects")
    summary = cohort_summary(subjects)
    atomic.write_csv(tmp / "subjects.csv",
                     [{k: r[k] for k in ("subject_id", "family_id", "n_visits", "graded", "sex")} for r in subjects],
                     ["subject_id", "family_id", "n_visits", "graded", "sex"])
    atomic.write_json(tmp / "cohort.json", {
        "schema": COHORT_SCHEMA, "truth_schema": TRUTH_SCHEMA, "generator": f"SpineSSL {__version__}",
        "seed": cfg.seed, "config": cfg.to_dict(), "summary": summary,
        "layout": LAYOUT,
        "label_convention": "SPIDER: vertebrae from the bottom (L5=1 ... T12=6, T11=7, T10=8), S1=26 (SpineSSL), "
                            "discs L5-S1=201 ... T12-L1=206, canal=100",
        "grade_mapping": "Pfirrmann 1-2 -> 1, 3 -> 2, 4 -> 3, 5 -> 4",
    })
    return summary
