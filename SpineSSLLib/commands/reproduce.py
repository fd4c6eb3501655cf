"""``spine-ssl reproduce``: the paper's learning-curve experiment, from a cohort to a report."""

NAME = "reproduce"
HELP = "run the paper's learning-curve experiment (pretrain, then grading per size x mode x seed) and write report.md"
DESCRIPTION = (
    "From a cohort folder of DICOM (a synthetic cohort made on the fly by default): index, "
    "extract, longitudinal pretraining, a supervised source network on a second disjoint cohort, "
    "then for each training-set size (the paper's 240/361/670 subjects, scaled; nested subsets) x "
    "transfer mode x seed a grading model and its test average class accuracy. Writes report.md "
    "(table with 95% CIs, paired tests across seeds, naive baselines, pretraining figures beside the "
    "raw-pixel AUC, frozen-trunk probes, both pair objectives at equal compute, timings) and fig8.png. "
    "On your own archive: --cohort DICOM_FOLDER --levels KIND:FOLDER --grades CSV. Resumable: run the "
    "same command again after an interruption.")


def add_arguments(parser):
    parser.add_argument("--out", required=True, help="experiment folder (created; reused to resume)")
    parser.add_argument("--preset", choices=("small", "paper"), default="small",
                        help="small: 2-core CPU (~90 min budget); paper: GPU, the paper's sizes")
    parser.add_argument("--cohort", help="folder of DICOM scans to use instead of a synthetic cohort")
    parser.add_argument("--supervised-cohort", help="a second, fully graded, disjoint cohort for the "
                        "supervised upper bound (default: a synthetic one)")
    parser.add_argument("--levels", help="level source of --cohort for `spine-ssl extract` (KIND:FOLDER); "
                        "synthetic cohorts use their truth files")
    parser.add_argument("--supervised-levels", help="level source of --supervised-cohort (KIND:FOLDER)")
    parser.add_argument("--grades", help="disc gradings of --cohort: a CSV as for `spine-ssl extract --grades` "
                        "(synthetic cohorts use their truth files)")
    parser.add_argument("--supervised-grades", help="disc gradings of --supervised-cohort (CSV)")
    parser.add_argument("--no-compare-objective", action="store_true",
                        help="skip the second pretraining with the other pair objective (contrastive <-> NT-Xent)")
    parser.add_argument("--report-only", action="store_true",
                        help="only (re)write report.md and fig8.png from the runs finished so far")
    parser.add_argument("--shard", default="0/1", help="I/N: this process does every N-th grading run "
                        "starting at I (run N processes, e.g. on N GPUs, on one --out)")
    parser.add_argument("--max-runs", type=int, help="stop after this many new grading runs (continue later)")
    parser.add_argument("--subjects", type=int, help="synthetic cohort size (overrides the preset)")
    parser.add_argument("--seeds", type=int, help="number of seeds per size and mode (>= 3 for CIs)")
    parser.add_argument("--modes", help="comma-separated subset of the transfer modes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--pretrain-epochs", type=int, help="maximum pretraining epochs (overrides the preset)")
    parser.add_argument("--grade-epochs", type=int, help="maximum epochs per grading run (overrides the preset)")


def run(args) -> int:
    import shlex
    import sys

    from .. import reproduce
    from ..errors import ConfigError
    from ..grading import MODES

    over = {}
    if args.subjects:
        over["subjects"] = args.subjects
    if args.seeds:
        if args.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        over["seeds"] = tuple(range(args.seeds))
    if args.modes:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise ConfigError(f"unknown mode(s) {', '.join(bad)} (choose from {', '.join(MODES)})")
        over["modes"] = modes
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = reproduce.preset(args.preset, **over)
    if args.pretrain_epochs:
        from ..config import merge

        cfg.pretrain = merge(cfg.pretrain, {"train": {"max_epochs": args.pretrain_epochs}})
    if args.grade_epochs:
        from ..config import merge

        cfg.grade = merge(cfg.grade, {"train": {"max_epochs": args.grade_epochs}})
    if args.no_compare_objective:
        cfg.compare_objective = False
    rep = reproduce.Reproduction(args.out, cfg, cohort=args.cohort, supervised_cohort=args.supervised_cohort,
                                 levels=args.levels, supervised_levels=args.supervised_levels, grades=args.grades,
                                 supervised_grades=args.supervised_grades)
    if args.report_only:
        from ..reproduce import write_report

        print(f"report: {write_report(rep)}")
        return 0
    try:
        i, n = (int(v) for v in args.shard.split("/"))
        assert 0 <= i < n
    except (ValueError, AssertionError):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N, got {args.shard!r}") from None
    argv = [a for a in sys.argv[1:]]
    report = rep.run(command="spine-ssl " + " ".join(shlex.quote(a) for a in argv),
                     max_new_runs=args.max_runs, shard=(i, n))
    print(f"report: {report}")
    return 0
