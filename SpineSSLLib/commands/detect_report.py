"""``spine-ssl detect-report EVAL.json ... --out DIR``: compare detector evaluations."""

NAME = "detect-report"
HELP = "compare detector evaluations: a markdown table and one reliability diagram"
DESCRIPTION = (
    "Read evaluation.json files written by `spine-ssl detect --reference` or `detect-train` (give "
    "NAME=PATH to name a row) and write OUT/summary.md (scans, centroid error, levels named right, "
    "scans all right, mean confidence of right and wrong labels, expected calibration error) and "
    "OUT/reliability.png (reliability diagram of the level confidence, one curve per evaluation).")


def add_arguments(parser):
    parser.add_argument("evaluations", nargs="+", help="evaluation.json files, optionally NAME=PATH")
    parser.add_argument("--out", required=True, help="output folder")


def run(args) -> int:
    import json
    from pathlib import Path

    from ..detect.evaluate import write_comparison
    from ..errors import InputError

    named = {}
    for item in args.evaluations:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        p = Path(path)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
            d["centroid_mm"], d["n_scans"]  # noqa: B018 - an evaluation summary has these
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"not a detector evaluation ({type(e).__name__})", p) from e
        named[name or p.parent.name] = d
    write_comparison(named, args.out)
    print((Path(args.out) / "summary.md").read_text(), end="")
    return 0
