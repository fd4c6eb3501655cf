"""``spine-ssl grade``: per-disc degeneration grades for one scan."""

NAME = "grade"
HELP = "grade the discs of one scan with a grading model (JSON + CSV, with test-time augmentation)"
DESCRIPTION = (
    "Grade the six discs T12-L1 .. L5-S1 of one sagittal T2 scan: the disc volumes are extracted at "
    "the given levels, the grading model predicts class probabilities averaged over test-time "
    "augmentations (in-plane shifts, neighbouring 9-slice windows, slice-order flip; SpineNet V1 "
    "style) and OUT/grades.json + OUT/grades.csv are written (level, grade, probabilities, disc "
    "centre in LPS mm). Optionally exports the model to ONNX and checks ONNX Runtime agrees.")

LEVEL_KINDS = ("auto", "truth", "markups", "labels", "spinenet")


def add_arguments(parser):
    parser.add_argument("model", help="grading model folder (from `spine-ssl grade-train`: OUT or OUT/best)")
    parser.add_argument("scan", nargs="?", help="DICOM series folder or NIfTI/NRRD/MHA image")
    parser.add_argument("--levels", help="vertebra levels of the scan: Slicer markups (.mrk.json), label map "
                        "(.nii.gz/.nrrd/.mha), SpineNet vert_dicts JSON or synthetic truth JSON")
    parser.add_argument("--levels-kind", choices=LEVEL_KINDS, default="auto",
                        help="how to read --levels (default: from the file name and content)")
    parser.add_argument("--label-mapping", default="spider", help="label maps: preset or mapping file (default spider)")
    parser.add_argument("--volumes", help="an extracted volume file (volumes/<scan_key>.npz) instead of scan + levels")
    parser.add_argument("--out", required=True, help="output folder for grades.json and grades.csv")
    parser.add_argument("--no-tta", action="store_true", help="one view per disc (no test-time augmentation)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda ...")
    parser.add_argument("--onnx", action="store_true", help="also export OUT/model.onnx and check ONNX Runtime "
                        "gives the same probabilities")


def _levels_kind(path: str, kind: str) -> str:
    import json

    if kind != "auto":
        return kind
    low = path.lower()
    if low.endswith(".mrk.json"):
        return "markups"
    if low.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        return "labels"
    if low.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError):
            return "truth"  # the loader reports the problem with the file name
        if isinstance(d, dict) and str(d.get("schema", "")).startswith("spinessl.synth.truth"):
            return "truth"
        if isinstance(d, dict) and "markups" in d:
            return "markups"
        return "spinenet"
    from ..errors import ConfigError

    raise ConfigError(f"cannot tell what kind of level file this is (use --levels-kind): {path}")


def _load_levels(path: str, kind: str, scan, mapping: str):
    from .. import levels as L

    kind = _levels_kind(path, kind)
    if kind == "truth":
        return L.from_truth_json(path)
    if kind == "markups":
        return L.from_markups(path)
    if kind == "labels":
        return L.from_labelmap(path, scan, L.resolve_label_mapping(mapping))
    return L.load_spinenet_json(path, scan)


def run(args) -> int:
    import os

    from .. import grading
    from ..atomic import write_csv, write_json
    from ..errors import ConfigError, InputError

    if bool(args.volumes) == bool(args.scan):
        raise ConfigError("give either SCAN with --levels, or --volumes")
    gm = grading.load_grading_model(args.model, args.device)
    tta = grading.TTAConfig.none() if args.no_tta else grading.TTAConfig()
    if args.volumes:
        from ..extract import load_volumes

        if not os.path.isfile(args.volumes):
            raise InputError("volume file not found", args.volumes)
        sv = load_volumes(args.volumes)
        doc = grading.grade_volumes(gm, sv.ivd, sv.ivd_present, sv.discs, sv.ivd_affine, tta)
        ivd = sv.ivd
    else:
        from ..extract import extract_scan
        from ..io import read_scan

        if not args.levels:
            raise ConfigError("--levels is required with a scan")
        if not os.path.exists(args.levels):
            raise InputError("level file not found", args.levels)
        scan = read_scan(args.scan)
        levels = _load_levels(args.levels, args.levels_kind, scan, args.label_mapping)
        sv = extract_scan(scan, levels)
        doc = grading.grade_volumes(gm, sv.ivd, sv.ivd_present, sv.discs, sv.ivd_affine, tta)
        doc["issues"] = list(sv.issues)  # extract_scan already carries the level set's issues
        ivd = sv.ivd
    if args.onnx:
        import time

        import numpy as np
        import torch

        onnx_path = grading.export_onnx(gm, os.path.join(args.out, "model.onnx"))
        present = np.flatnonzero(sv.ivd_present)
        x = np.asarray(ivd, dtype=np.float32)[present]
        t0 = time.perf_counter()
        p_torch = grading.predict_proba(gm.model, x, grading.TTAConfig.none())
        t_torch = time.perf_counter() - t0
        try:
            grading.onnx_predict(onnx_path, x[:1])  # session warm-up is not inference time
            t0 = time.perf_counter()
            p_onnx = grading.onnx_predict(onnx_path, x, threads=torch.get_num_threads())
            t_onnx = time.perf_counter() - t0
            doc["onnx"] = {"file": "model.onnx", "max_abs_prob_diff": float(np.abs(p_onnx - p_torch).max()),
                           "torch_s": round(t_torch, 4), "onnxruntime_s": round(t_onnx, 4)}
        except ImportError:
            doc["onnx"] = {"file": "model.onnx", "check": "onnxruntime not installed"}
    write_json(os.path.join(args.out, "grades.json"), doc)
    write_csv(os.path.join(args.out, "grades.csv"), grading.grades_csv_rows(doc))
    for d in doc["discs"]:
        if d["present"]:
            p = max(d["probabilities"].values())
            print(f"{d['level']:>7}: grade {d['grade']}  (p={p:.2f})")
        else:
            print(f"{d['level']:>7}: not graded (disc not in the scan's levels)")
    if "onnx" in doc:
        print(f"onnx: {doc['onnx']}")
    print(f"grades: {os.path.join(args.out, 'grades.json')}")
    return 0
