"""``spine-ssl synth OUT``: write a synthetic longitudinal lumbar-MRI cohort as real DICOM."""

NAME = "synth"
HELP = "generate a synthetic longitudinal lumbar-spine MRI cohort (DICOM + ground truth)"
DESCRIPTION = (
    "Generate a synthetic longitudinal cohort of sagittal T2 lumbar-spine MRIs written as real "
    "DICOM series, with ground-truth JSON (levels, disc grades) and SPIDER-numbered label maps. "
    "See docs/synthetic-cohort.md."
)


def add_arguments(parser):
    parser.add_argument("out", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--preset", default="demo", help="tiny | demo | paper (default: demo)")
    parser.add_argument("--subjects", type=int, default=None, help="number of subjects")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--followup-fraction", type=float, default=None, help="share of subjects with follow-ups")
    parser.add_argument("--three-visit-fraction", type=float, default=None,
                        help="share of followed-up subjects with a second follow-up")
    parser.add_argument("--twin-fraction", type=float, default=None, help="share of subjects in twin pairs")
    parser.add_argument("--graded-fraction", type=float, default=None, help="share of subjects with disc grades")
    parser.add_argument("--scanner-mode", choices=("paper", "mixed"), default=None,
                        help="paper: 1.0 T baseline / 1.5 T follow-up; mixed: 1.5 T or 3 T per scan as in SPIDER")
    parser.add_argument("--rater-noise", type=float, default=None, help="share of grades moved to an adjacent grade")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: 2, or 1 on a single-core machine); output does not depend on it")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args) -> int:
    import os

    from ..synth.cohort import generate_cohort
    from ..synth.config import preset

    cfg = preset(args.preset, subjects=args.subjects, seed=args.seed, followup_fraction=args.followup_fraction,
                 three_visit_fraction=args.three_visit_fraction, twin_fraction=args.twin_fraction,
                 graded_fraction=args.graded_fraction, scanner_mode=args.scanner_mode, rater_noise=args.rater_noise)
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    s = generate_cohort(args.out, cfg, overwrite=args.overwrite, workers=workers)
    h = s["grade_histogram"]
    print(f"synthetic cohort in {args.out}: {s['subjects']} subjects ({s['twin_pairs']} twin pairs, "
          f"{s['with_followup']} with follow-ups), {s['scans']} scans")
    print("field strength: " + ", ".join(f"{k}: {v}" for k, v in s["field_strength"].items()))
    print("disc grades: " + ", ".join(f"{k}: {v}" for k, v in h.items()))
    return 0
