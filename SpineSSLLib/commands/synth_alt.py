"""``spine-ssl synth-alt OUT``: a held-out EVALUATION cohort from the second generator."""

NAME = "synth-alt"
HELP = "generate a held-out evaluation cohort with a structurally different generator (never train on it)"
DESCRIPTION = (
    "Generate a synthetic longitudinal lumbar-MRI cohort with the held-out generator: different anatomy "
    "model, contrast, field of view, scanner simulation and DICOM conventions from `spine-ssl synth`, same "
    "output layout (DICOM, truth JSON, SPIDER label maps). EVALUATION ONLY: use it to test models trained "
    "on `spine-ssl synth` cohorts, never to train. See docs/synthetic-cohort.md, 'Held-out generator'."
)


def add_arguments(parser):
    from ._synthetic import add_cohort_arguments, add_rater_noise, add_twin_grade_arguments

    def knobs(p):
        add_twin_grade_arguments(p)
        add_rater_noise(p)
        p.add_argument("--max-matrix", type=int, default=None,
                       help="cap of the reconstructed in-plane matrix (default 768; tiny: 320)")

    add_cohort_arguments(parser, "eval", "tiny | eval | large (default: eval, 40 subjects)", knobs)


def run(args) -> int:
    from ..synth_alt.cohort import generate_cohort
    from ..synth_alt.config import preset
    from ._synthetic import print_summary, workers

    cfg = preset(args.preset, subjects=args.subjects, seed=args.seed, followup_fraction=args.followup_fraction,
                 twin_fraction=args.twin_fraction, graded_fraction=args.graded_fraction,
                 rater_noise=args.rater_noise, max_matrix=args.max_matrix)
    s = generate_cohort(args.out, cfg, overwrite=args.overwrite, workers=workers(args))
    print_summary(s, f"held-out evaluation cohort in {args.out}", " -- evaluation only, never train on it",
                  f"; fat-suppressed: {s['fat_suppressed_scans']}")
    return 0
