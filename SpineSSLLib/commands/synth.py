"""``spine-ssl synth OUT``: write a synthetic longitudinal lumbar-MRI cohort as real DICOM."""

NAME = "synth"
HELP = "generate a synthetic longitudinal lumbar-spine MRI cohort (DICOM + ground truth)"
DESCRIPTION = (
    "Generate a synthetic longitudinal cohort of sagittal T2 lumbar-spine MRIs written as real "
    "DICOM series, with ground-truth JSON (levels, disc grades) and SPIDER-numbered label maps. "
    "See docs/synthetic-cohort.md."
)


def add_arguments(parser):
    from ._synthetic import add_cohort_arguments, add_rater_noise, add_twin_grade_arguments

    def knobs(p):
        p.add_argument("--three-visit-fraction", type=float, default=None,
                       help="share of followed-up subjects with a second follow-up")
        add_twin_grade_arguments(p)
        p.add_argument("--scanner-mode", choices=("paper", "mixed"), default=None,
                       help="paper: 1.0 T baseline / 1.5 T follow-up; mixed: 1.5 T or 3 T per scan as in SPIDER")
        add_rater_noise(p)

    add_cohort_arguments(parser, "demo", "tiny | demo | paper (default: demo)", knobs)


def run(args) -> int:
    from ..synth.cohort import generate_cohort
    from ..synth.config import preset
    from ._synthetic import print_summary, workers

    cfg = preset(args.preset, subjects=args.subjects, seed=args.seed, followup_fraction=args.followup_fraction,
                 three_visit_fraction=args.three_visit_fraction, twin_fraction=args.twin_fraction,
                 graded_fraction=args.graded_fraction, scanner_mode=args.scanner_mode, rater_noise=args.rater_noise)
    s = generate_cohort(args.out, cfg, overwrite=args.overwrite, workers=workers(args))
    print_summary(s, f"synthetic cohort in {args.out}")
    return 0
