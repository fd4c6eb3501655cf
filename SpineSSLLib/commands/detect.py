"""``spine-ssl detect INPUT --out OUT``: detect and label T12..S1 automatically in every scan."""

NAME = "detect"
HELP = "detect vertebrae T12..S1 and their levels automatically (built-in model or SpineNet)"
DESCRIPTION = (
    "Detect and label the vertebral bodies T12..S1 in every sagittal scan under INPUT (DICOM series "
    "and/or NIfTI/NRRD/MHA images).  Writes OUT/<SeriesInstanceUID or image stem>.json (levels: "
    "centroid, 4 corners, slice range, mid slice, confidence; low-confidence levels listed under "
    "'issues'), OUT/detect.csv (one row per scan), OUT/errors.csv for unreadable scans, and with "
    "--markups a Slicer .mrk.json per scan in OUT/markups holding the levels with confidence >= 0.5 "
    "(usable as `spine-ssl extract --levels markups:OUT/markups`).  With --reference DIR the "
    "detections are compared with known levels (OUT/evaluation.json + .png).")


def add_arguments(parser):
    parser.add_argument("input", help="a DICOM series folder, an image file, or a folder of them")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--detector", default="detect", choices=["detect", "spinenet"],
                        help="built-in detector (default) or SpineNet when installed")
    parser.add_argument("--model", help="detector model folder (default: the bundled synthetic-data model)")
    parser.add_argument("--reference", help="folder of known levels (truth JSON, .mrk.json, label maps) to "
                                            "evaluate against")
    parser.add_argument("--label-mapping", help="label-map values -> levels for --reference label maps")
    parser.add_argument("--markups", action="store_true",
                        help="also write Slicer markups per scan (levels with confidence >= 0.5)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")


def run(args) -> int:
    from pathlib import Path

    from .. import atomic
    from ..errors import SpineSSLError
    from ..levels import resolve_label_mapping, to_markups_dict
    from ..progress import track
    from ..detect import cases as C
    from ..detect.infer import usable_levels

    out = Path(args.out)
    unreadable = []
    refs = C.discover(args.input, args.reference, errors=unreadable)
    if not refs:
        if unreadable:
            raise unreadable[0][1]
        raise SpineSSLError("no DICOM series or images found", args.input)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ..train import select_device

    device = str(select_device(args.device))
    if args.detector == "spinenet":
        from ..detect import spinenet

        net = spinenet.load(device)
        detector_name = "spinenet"

        def run_one(scan, where):
            return spinenet.detect_scan(net, scan, where), None
    else:
        from ..detect.infer import detect_scan
        from ..detect.model import load_detector

        det = load_detector(args.model, device=device)
        detector_name = str(det.meta.get("config", {}).get("name") or det.path.name)

        def run_one(scan, where):
            p = detect_scan(det, scan, where)
            return p.levels, p

    rows, errors, preds = [], [], {}
    for f, e in unreadable:  # file name only: folder names may carry patient identifiers
        errors.append({"scan": Path(f).name, "stage": "read", "error": type(e).__name__, "message": e.cause})
    for ref in track(refs, desc="detecting", unit="scan"):
        try:
            scan = C.load_scan(ref)
            levels, _ = run_one(scan, ref.where)
        except SpineSSLError as e:
            # the scan key and the cause only: folder names may carry patient identifiers
            errors.append({"scan": ref.key, "stage": "detect", "error": type(e).__name__, "message": e.cause})
            continue
        d = {"schema": "spinessl.levels/1", "detector": detector_name, "key": ref.key}
        d.update(levels.to_dict())
        atomic.write_json(out / f"{ref.key}.json", d)
        if args.markups:  # only levels a downstream stage may use (low-confidence ones are in the JSON)
            atomic.write_json(out / "markups" / f"{ref.key}.mrk.json", to_markups_dict(usable_levels(levels)))
        low = [lv.name for lv in levels if lv.confidence < 0.5]
        rows.append({"key": ref.key, "n_levels": len(levels), "levels": " ".join(levels.names),
                     "low_confidence": " ".join(low), "issues": " | ".join(levels.issues)})
        preds[ref.key] = levels
    atomic.write_csv(out / "detect.csv", rows, ["key", "n_levels", "levels", "low_confidence", "issues"])
    if errors:
        atomic.write_csv(out / "errors.csv", errors, ["scan", "stage", "error", "message"])
    n_all = sum(1 for r in rows if r["n_levels"] == 7 and not r["low_confidence"])
    print(f"detected levels in {len(rows)} of {len(refs)} scans ({n_all} with all 7 levels confident); "
          f"{len(errors)} failed -> {out}")
    if args.reference:
        from ..detect.evaluate import compare, in_view, summarise, write_report

        mapping = resolve_label_mapping(args.label_mapping) if args.label_mapping else None
        results = []
        for ref in refs:
            if ref.key not in preds or ref.levels_file is None:
                continue
            try:
                scan = C.load_scan(ref)
                truth, outside = in_view(C.load_levels(ref, scan, mapping), scan)
            except SpineSSLError as e:
                errors.append({"scan": ref.key, "stage": "reference", "error": type(e).__name__,
                               "message": e.cause})
                continue
            results.append(compare(ref.key, preds[ref.key], truth, ignore=tuple(outside)))
        summary = summarise(results)
        write_report(summary, out / "evaluation.json", out / "evaluation.png")
        cm = summary["centroid_mm"]["mean"]
        print(f"vs reference ({len(results)} scans): mean centroid error "
              f"{'n/a' if cm is None else f'{cm:.2f} mm'}, labelling accuracy {_pct(summary['labelling_accuracy'])}, "
              f"all levels right in {_pct(summary['scans_all_correct'])} of scans")
        if errors:
            atomic.write_csv(out / "errors.csv", errors, ["scan", "stage", "error", "message"])
    return 1 if errors else 0


def _pct(fraction) -> str:
    """A fraction printed as a percentage with one decimal (``n/a`` when unknown)."""
    return "n/a" if fraction is None else f"{100 * fraction:.1f} %"
