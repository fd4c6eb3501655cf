"""``spine-ssl extract C --levels KIND:FOLDER``: the 7 VB and 6 IVD volumes of every selected
scan of an indexed cohort, with the volume manifest."""

NAME = "extract"
HELP = "cut the 7 vertebral-body and 6 disc volumes per scan, with a manifest"
DESCRIPTION = (HELP + ".  Writes C/volumes/<scan_key>.npz (+ .json sidecar), C/volumes.csv, "
               "C/errors.csv (failed scans appended to the index's rows) and with --qc C/qc/<scan_key>.png.  Resumable: finished scans are "
               "skipped.  Exit codes: 0 all scans ok; 1 some scans failed (see errors.csv); "
               "2 bad input; 130 interrupted.")


def add_arguments(parser):
    parser.add_argument("cohort", help="cohort folder written by `spine-ssl index`")
    parser.add_argument("--levels", required=True, metavar="KIND:FOLDER",
                        help="where vertebra levels come from: truth:FOLDER (synthetic truth JSON, "
                        "<SeriesInstanceUID>.json), markups:FOLDER (<key>.mrk.json), labels:FOLDER "
                        "(<key>_labels.nii.gz / .nrrd / .mha), spinenet:FOLDER (<key>.json vert_dicts), levels:FOLDER "
                        "(<key>.json level sets written by `spine-ssl detect`), detect or "
                        "detect:MODEL (automatic detection; levels with confidence < 0.5 are not used); "
                        "<key> is the scan_key, the SeriesInstanceUID or the image file stem")
    parser.add_argument("--label-mapping", default="spider",
                        help="label maps: preset (spider, synthetic, totalseg_mr = TotalSegmentator --task "
                        "vertebrae_mr, totalspineseg = TotalSpineSeg) or a JSON/CSV label->level file (default spider)")
    parser.add_argument("--grades", help="disc grades: 'truth' (from truth files; default with truth levels) "
                        "or a CSV with scan_key|series_uid, disc, grade")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--qc", action="store_true", help="write a QC PNG per scan in C/qc/")
    parser.add_argument("--root", help="source folder, if it moved since indexing")
    parser.add_argument("--overwrite", action="store_true", help="re-extract scans that are already done")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--vb-fov", type=float, default=2.0, help="VB patch width / VB width (default 2)")
    parser.add_argument("--ivd-fov", type=float, default=2.0, help="IVD patch width / VB width (default 2)")
    parser.add_argument("--limit", type=int, help="only the first N selected scans (for trials)")
    parser.add_argument("--shard", metavar="I/N", help="extract only shard I of N (I from 0; whole subjects, by a stable "
                        "hash), manifests into C/shards/extract-I-of-N/; join with `spine-ssl merge C`.  Default: the "
                        "Slurm array task (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) when set; 'none' turns it off")


def run(args) -> int:
    from collections import Counter

    from .. import shard as S
    from ..errors import ConfigError
    from ..extract import ExtractConfig, run_extraction
    from ..levels import LevelSource

    if args.workers < 1:
        raise ConfigError("--workers must be >= 1")
    src = LevelSource.parse(args.levels, args.label_mapping)
    cfg = ExtractConfig(vb_fov=args.vb_fov, ivd_fov=args.ivd_fov, device=args.device)
    shard = S.resolve(args.shard)
    s = run_extraction(args.cohort, src, cfg, workers=args.workers, qc=args.qc, grades=args.grades,
                       root=args.root, overwrite=args.overwrite, debug=args.debug, limit=args.limit,
                       shard=shard)
    man = S.shard_dir(args.cohort, "extract", shard) if shard is not None else args.cohort
    flagged = sum(1 for r in s.results if r["status"] == "ok" and (r["n_vb"] < 7 or r["n_ivd"] < 6))
    see = f" (see {man}/errors.csv)" if s.failed else ""
    print(f"extract{f' shard {shard}' if shard else ''}: {s.ok} ok, {s.skipped} skipped (already done), "
          f"{s.failed} failed{see}; {s.n_volumes} volumes in {man}/volumes.csv; {flagged} scan(s) with missing levels")
    if shard is not None:
        print(f"join the shards with `spine-ssl merge {args.cohort}`")
    reasons = Counter(f"{r['error_type']}: {r['message'].split(': ', 1)[-1]}" for r in s.results if r["status"] != "ok")
    for reason, n in reasons.most_common(10):
        print(f"  failed x{n}: {reason}")
    for r in s.results:
        if args.debug and r.get("traceback"):
            print(r["traceback"])
    if args.qc and s.results:
        first = next((r for r in s.results if r["status"] == "ok"), None)
        if first:
            print(f"QC picture: {args.cohort}/qc/{first['scan_key']}.png")
    return 1 if s.failed else 0
