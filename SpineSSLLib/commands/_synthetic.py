"""Options and summary lines shared by the commands of the synthetic-cohort generators (a module
starting with "_" is not a subcommand)."""


def add_cohort_arguments(parser, preset_default: str, preset_help: str, extra=None) -> None:
    """OUT, --preset, the knobs every generator has, ``extra(parser)`` (the generator's own knobs),
    then --workers and --overwrite."""
    parser.add_argument("out", help="output folder (must be empty or absent unless --overwrite)")
    parser.add_argument("--preset", default=preset_default, help=preset_help)
    parser.add_argument("--subjects", type=int, default=None, help="number of subjects")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--followup-fraction", type=float, default=None, help="share of subjects with follow-ups")
    if extra is not None:
        extra(parser)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: 2, or 1 on a single-core machine); output does not depend on it")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def add_twin_grade_arguments(parser) -> None:
    parser.add_argument("--twin-fraction", type=float, default=None, help="share of subjects in twin pairs")
    parser.add_argument("--graded-fraction", type=float, default=None, help="share of subjects with disc grades")


def add_rater_noise(parser) -> None:
    parser.add_argument("--rater-noise", type=float, default=None, help="share of grades moved to an adjacent grade")


def workers(args) -> int:
    import os

    return args.workers if args.workers is not None else min(2, os.cpu_count() or 1)


def print_summary(s: dict, head: str, scans_tail: str = "", field_strength_tail: str = "") -> None:
    """The generator's summary: ``head`` + subjects, twin pairs, follow-ups and scans; field
    strengths; disc grades."""
    print(f"{head}: {s['subjects']} subjects ({s['twin_pairs']} twin pairs, "
          f"{s['with_followup']} with follow-ups), {s['scans']} scans{scans_tail}")
    print("field strength: " + ", ".join(f"{k}: {v}" for k, v in s["field_strength"].items()) + field_strength_tail)
    print("disc grades: " + ", ".join(f"{k}: {v}" for k, v in s["grade_histogram"].items()))
