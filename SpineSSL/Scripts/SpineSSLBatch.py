"""SpineSSL batch mode: load each scan into an MRML scene, run the module's workflow, save outputs.

Run with the full Slicer application but no window:

    Slicer --no-splash --no-main-window --python-script SpineSSL/Scripts/SpineSSLBatch.py \\
        --cohort /data/synthetic-cohort --out /data/spinessl-slicer-out

    Slicer --no-splash --no-main-window --python-script SpineSSL/Scripts/SpineSSLBatch.py \\
        --list scans.csv --out /data/spinessl-slicer-out --model grading/  # columns: image, levels[, key]

Per scan ``OUT/<key>/<key>.mrk.json`` (levels, locked), ``<key>.seg.nrrd`` (one segment per disc
and vertebral body), when grades are known (a synthetic cohort's truth, or a ``grader`` passed to
``process_batch``) ``<key>.csv`` (+ ``.schema.csv``), and with ``--save-volume`` the scan as
``<key>.nrrd``; one row per scan in ``OUT/batch.csv``.  Keys are pseudonymous (salted hash of the input path; the salt stays
in ``OUT/batch_salt.txt``, keep it private) so no folder or patient name reaches the outputs.
A scan that fails is reported in ``batch.csv`` and the batch carries on; the exit code is 0 when
all scans succeeded, 1 when some failed, 2 on bad arguments.

The same core (``process_batch``) runs under plain Python with ``slicer-core`` (the tests do
that); machines without Slicer can use the ``spine-ssl`` command line instead.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT = 0, 1, 2


@dataclass
class BatchItem:
    image: Path  # DICOM series folder or NRRD/NIfTI/MHA file
    levels: Path  # Slicer .mrk.json or a synthetic truth .json
    key: str = ""  # output stem (pseudonymous); filled by assign_keys when empty
    grades_from_truth: bool = False  # synthetic cohort: show the truth grades (no model given)
    save_volume: bool = False  # also write the scan as <key>.nrrd (for figures and review)


def load_or_create_salt(out_dir: Path) -> str:
    from SpineSSLLib import atomic

    path = out_dir / "batch_salt.txt"
    if path.is_file():
        return path.read_text().strip()
    salt = secrets.token_hex(16)
    atomic.write_text(path, salt + "\n")
    return salt


def assign_keys(items: list[BatchItem], salt: str, root: Path | None = None) -> None:
    for item in items:
        if item.key:
            continue
        rel = os.path.relpath(item.image, root) if root else os.fspath(Path(item.image).resolve())
        item.key = "scan_" + hashlib.sha256((salt + "|" + rel).encode()).hexdigest()[:12]


def synthetic_items(root: Path) -> list[BatchItem]:
    """All series of a ``spine-ssl synth`` cohort with their ground-truth levels, by subject and
    visit (baseline first)."""
    from SpineSSLLib.errors import InputError

    truths = sorted((root / "truth").glob("*.json"))
    if not (root / "cohort.json").is_file() or not truths:
        raise InputError("not a synthetic cohort (no cohort.json / truth/*.json)", root)
    docs = sorted(((json.loads(t.read_text()), t) for t in truths),
                  key=lambda x: (x[0].get("subject_id", ""), x[0].get("visit", 0)))
    return [BatchItem(root / doc["dicom_dir"], t, grades_from_truth=True) for doc, t in docs]


def list_items(path: Path) -> list[BatchItem]:
    """Scans from a CSV with columns ``image``, ``levels`` and optionally ``key`` (paths relative
    to the CSV's folder allowed)."""
    from SpineSSLLib.errors import ManifestError

    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read scan list ({type(e).__name__})", path) from e
    if not rows or not {"image", "levels"} <= set(rows[0]):
        raise ManifestError("scan list needs the columns image, levels", path)
    base = path.parent
    return [BatchItem(base / r["image"], base / r["levels"], (r.get("key") or "").strip()) for r in rows]


def read_levels(path: Path):
    from SpineSSLLib import levels as L

    if path.name.endswith(".mrk.json"):
        return L.from_markups(path)
    return L.from_truth_json(path)


def truth_grades(path: Path) -> dict:
    doc = json.loads(Path(path).read_text())
    return {d["name"]: d.get("grade") for d in doc.get("discs", [])}


def process_item(scene, item: BatchItem, out_dir: Path, grader=None) -> dict:
    """One scan: image -> volume node, levels -> markups node, extraction, grading, outputs."""
    from SpineSSLLib import io
    from SpineSSLLib import scene as S

    scan = io.read_scan(item.image)
    volume = S.volume_node_from_scan(scene, scan, item.key)
    levels_node = S.markups_from_levels(scene, read_levels(item.levels), item.key + S.LEVELS_SUFFIX)
    levels = S.levels_from_markups(levels_node)  # what the module does with the user's points
    scan, used, volumes = S.extract_in_scene(volume, levels)
    if grader is not None:
        results = grader(volumes)
    elif item.grades_from_truth:
        results = S.results_from_grades(truth_grades(item.levels))
    else:
        results = []
    outputs = S.show_results(scene, volume, scan, used, volumes, results)
    files = S.save_outputs(outputs, out_dir / item.key, item.key)
    if item.save_volume:
        files["volume"] = S.save_volume(volume, out_dir / item.key / f"{item.key}.nrrd")
    grades = {r.name: r.grade for r in results if r.kind == "IVD"}
    return {"key": item.key, "status": "ok", "levels": len(used), "discs": int(volumes.ivd_present.sum()),
            "grades": " ".join(f"{k}={'' if v is None else v}" for k, v in grades.items()),
            "issues": "; ".join(volumes.issues), "files": " ".join(p.name for p in files.values()), "error": ""}


def process_batch(items: list[BatchItem], out_dir, grader=None, new_scene=None, root: Path | None = None) -> list[dict]:
    """The batch core: every scan in its own fresh scene; failures are recorded, not raised."""
    from SpineSSLLib import atomic, progress
    from SpineSSLLib.errors import SpineSSLError

    if new_scene is None:
        import slicer

        new_scene = slicer.vtkMRMLScene
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    assign_keys(items, load_or_create_salt(out_dir), root)
    rows = []
    for item in progress.track(items, desc="SpineSSL batch", unit="scan"):
        scene = new_scene()
        try:
            rows.append(process_item(scene, item, out_dir, grader))
        except SpineSSLError as e:  # bad input: report (without the input path) and carry on
            message = str(e).replace(os.fspath(item.image), item.key).replace(os.fspath(item.levels), "<levels>")
            rows.append({"key": item.key, "status": "failed", "error": f"{type(e).__name__}: {message}"})
        finally:
            scene.Clear(1)
        atomic.write_csv(out_dir / "batch.csv", rows, ["key", "status", "levels", "discs", "grades", "issues",
                                                        "files", "error"])
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="SpineSSLBatch", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cohort", type=Path, help="a synthetic cohort folder (spine-ssl synth OUT)")
    src.add_argument("--list", type=Path, help="CSV with columns image, levels[, key]")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--save-volume", action="store_true", help="also save each scan as <key>.nrrd")
    p.add_argument("--model", type=Path, help="grading model folder (spine-ssl grade-train); default: no "
                                              "grading (a synthetic cohort shows its truth grades)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:N")
    return p


def model_grader(model_dir: Path, device: str = "auto"):
    """ScanVolumes -> per-disc results with a grading checkpoint (checked once, up front)."""
    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib import scene as S

    model_dir = ckpt.resolve(model_dir, "grading")
    return lambda volumes: S.grade_volumes(volumes, model_dir, device=device)


def main(argv: list[str] | None = None) -> int:
    from SpineSSLLib.errors import SpineSSLError

    args = build_parser().parse_args(argv)
    try:
        items = synthetic_items(args.cohort) if args.cohort else list_items(args.list)
        for item in items:
            item.save_volume = args.save_volume
        grader = model_grader(args.model, args.device) if args.model else None
        rows = process_batch(items, args.out, grader, root=args.cohort or args.list.parent)
    except SpineSSLError as e:
        print(f"SpineSSLBatch: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"SpineSSLBatch: {len(rows) - len(failed)} of {len(rows)} scans done; see {args.out / 'batch.csv'}")
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
