"""``spine-ssl index ROOT --out C``: group DICOM files into series, pick the sagittal T2 series
of each study, pseudonymise subjects and time points, write the cohort manifest."""

NAME = "index"
HELP = "read DICOM headers of a folder tree, group series, pick sagittal T2, pseudonymise"
DESCRIPTION = (HELP + ".  Writes C/series.csv (one row per series with status and reason), "
               "C/sources.csv, C/errors.csv, C/index.json and, once, the private C/cohort_salt.txt.  "
               "Exit codes: 0 ok; 1 indexed but some files/series were rejected (see errors.csv); "
               "2 bad input.")


def add_arguments(parser):
    parser.add_argument("root", help="folder tree of DICOM files (any nesting and file names), or of "
                        "NIfTI/NRRD/MHA volumes with --table")
    parser.add_argument("--out", required=True, help="cohort folder to write (C)")
    parser.add_argument("--config", help="JSON file with series-selection rules (see docs/extraction.md)")
    parser.add_argument("--families", help="CSV with a patient/subject id column and a family/twin id column")
    parser.add_argument("--table", help="for NIfTI/NRRD/MHA cohorts: CSV with columns file (relative to ROOT), "
                        "subject, date or interval_days, optional family, sex (M/F), age (years)")
    parser.add_argument("--shard", metavar="I/N", help="index only shard I of N (I from 0; whole subjects, by a stable "
                        "hash) into C/shards/index-I-of-N/, then join with `spine-ssl merge C`.  Default: the Slurm "
                        "array task (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT) when set; 'none' turns it off")


def run(args) -> int:
    from .. import shard as S
    from ..index import IndexConfig, build_index

    cfg = IndexConfig.from_file(args.config) if args.config else IndexConfig()
    shard = S.resolve(args.shard)
    res = build_index(args.root, args.out, cfg, families_csv=args.families, table=args.table, shard=shard)
    by_status = {}
    for r in res.series:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    subjects = {r["subject_key"] for r in res.series if r["status"] == "selected"}
    print(f"indexed {res.n_files} files ({res.n_ignored} not DICOM images): {len(res.series)} series, "
          + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
          + f"; {len(subjects)} subjects with a selected scan; {len(res.errors)} error(s)")
    reasons = {}
    for r in res.series:
        if r["status"] == "rejected":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  rejected x{n}: {reason}")
    for e in res.errors[:10]:
        print(f"  error: {e['file']}: {e['message']}")
    if shard is not None:
        print(f"shard {shard}: manifest {S.shard_dir(args.out, 'index', shard)}/series.csv "
              f"(join the shards with `spine-ssl merge {args.out}`)")
    else:
        print(f"manifest: {args.out}/series.csv")
    return 1 if res.errors else 0
