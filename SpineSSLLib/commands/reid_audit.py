"""``spine-ssl reid-audit C --out OUT [--checkpoint P]``: how often a later scan is matched to the
right person (gallery = earliest scans), for a pretrained network and naive baselines."""

NAME = "reid-audit"
HELP = "re-identification audit: top-1/top-5 identification and MRR of later scans against a gallery"
DESCRIPTION = (HELP + ".  Gallery = each subject's earliest scan, probes = later scans; per level and whole spine; "
               "for a pretraining checkpoint (--checkpoint) and the raw-pixel and hand-feature baselines on the "
               "same split, with a shuffled-identity control.  Writes OUT/reid_report.json, OUT/reid_report.md "
               "(with a plain-language risk statement naming the gallery size) and OUT/cmc.png.  "
               "Exit codes: 0 done; 2 bad input.")


def add_arguments(p):
    p.add_argument("cohort", help="cohort folder with volumes.csv (spine-ssl extract)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", help="pretraining output folder (uses best/) or a checkpoint folder")
    p.add_argument("--split", choices=["all", "train", "val", "test"],
                   help="subjects to audit (default: test with --checkpoint, else all); needs the splits file")
    p.add_argument("--splits", help="splits.json (default: the one beside the checkpoint)")
    p.add_argument("--baselines", default="raw_pixels,hand_features",
                   help="comma list of raw_pixels, hand_features, or none (default both)")
    p.add_argument("--truth", help="synthetic cohort's truth folder: adds the hidden fingerprint as a feature set")
    p.add_argument("--shuffles", type=int, default=200, help="permutations for the shuffled-identity control")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from pathlib import Path

    from .. import progress
    from ..errors import ConfigError
    from ..reid import METHOD_TITLES, ReidConfig, run_audit

    base = tuple(b.strip() for b in args.baselines.split(",") if b.strip() and b.strip() != "none")
    if args.shuffles < 0:
        raise ConfigError("--shuffles must be >= 0")
    split = args.split or ("test" if args.checkpoint else "all")
    cfg = ReidConfig(split=split, baselines=base, shuffles=args.shuffles, batch_size=args.batch_size,
                     device=args.device)
    res = run_audit(args.cohort, args.out, args.checkpoint, cfg, args.splits, args.truth, progress._enabled)
    rep = res.report
    print(f"reid-audit ({split} split): gallery of {rep['gallery_size']} people, {rep['n_probes']} later scans; "
          f"chance top-1 {100 * rep['chance']['top1']:.1f} %")
    for name, r in rep["methods"].items():
        w, s = r["whole_spine"], r["shuffled"]
        print(f"  {METHOD_TITLES.get(name, name)}: top-1 {100 * w['top1']:.1f} %, top-5 {100 * w['top5']:.1f} %, "
              f"MRR {w['mrr']:.3f} (shuffled identities: top-1 {100 * (s['top1'] or 0):.1f} %)")
    print(rep["risk_statement"])
    print(f"report: {Path(args.out) / 'reid_report.md'}")
    return 0
