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
    parser.add_argument("out", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--preset", default="eval", help="tiny | eval | large (default: eval, 40 subjects)")
    parser.add_argument("--subjects", type=int, default=None, help="number of subjects")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--followup-fraction", type=float, default=None, help="share of subjects with follow-ups")
    parser.add_argument("--twin-fraction", type=float, default=None, help="share of subjects in twin pairs")
    parser.add_argument("--graded-fraction", type=float, default=None, help="share of subjects with disc grades")
    parser.add_argument("--rater-noise", type=float, default=None, help="share of grades moved to an adjacent grade")
    parser.add_argument("--max-matrix", type=int, default=None,
                        help="cap of the reconstructed in-plane matrix (default 768; tiny: 320)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: 2, or 1 on a single-core machine); output does not depend on it")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def run(args) -> int:
    import os

    from ..synth_alt.cohort import generate_cohort
    from ..synth_alt.config import preset

    cfg = preset(args.preset, subjects=args.subjects, seed=args.seed, followup_fraction=args.followup_fraction,
                 twin_fraction=args.twin_fraction, graded_fraction=args.graded_fraction,
                 rater_noise=args.rater_noise, max_matrix=args.max_matrix)
    workers = args.workers if args.workers is not None else min(2, os.cpu_count() or 1)
    s = generate_cohort(args.out, cfg, overwrite=args.overwrite, workers=workers)
    h = s["grade_histogram"]
    print(f"held-out evaluation cohort in {args.out}: {s['subjects']} subjects ({s['twin_pairs']} twin pairs, "
          f"{s['with_followup']} with follow-ups), {s['scans']} scans -- evaluation only, never train on it")
    print("field strength: " + ", ".join(f"{k}: {v}" for k, v in s["field_strength"].items())
          + f"; fat-suppressed: {s['fat_suppressed_scans']}")
    print("disc grades: " + ", ".join(f"{k}: {v}" for k, v in h.items()))
    return 0
