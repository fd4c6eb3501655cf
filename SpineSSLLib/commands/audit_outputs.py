"""``spine-ssl audit-outputs DIR --source ROOT``: fail if any output carries a source identifier."""

NAME = "audit-outputs"
HELP = "check that no file under DIR contains identifying values from the source DICOM headers"


def add_arguments(parser):
    parser.add_argument("out_dir", help="folder of SpineSSL outputs to audit")
    parser.add_argument("--source", required=True, help="root folder of the source DICOM files")
    parser.add_argument("--report", help="also write the findings as JSON to this file")
    parser.add_argument("--allow", default="", metavar="FIELD[,FIELD]",
                        help="DICOM header fields that are meant to be output, e.g. Manufacturer,MagneticFieldStrength: "
                        "a match inside one of their values is not a hit (default: none)")


def run(args) -> int:
    import dataclasses

    from .. import atomic
    from ..privacy import audit_outputs

    rep = audit_outputs(args.out_dir, args.source, allow=args.allow.split(","))
    excused = f"; {rep.n_excused} match(es) inside allowed {', '.join(rep.allowed_fields)} values" \
        if rep.allowed_fields else ""
    print(f"audited {rep.n_output_files} output files against {rep.n_values} identifying values "
          f"from {rep.n_source_files} DICOM files: {len(rep.hits)} hit(s){excused}")
    for h in rep.hits[:50]:
        print(f"  {h.file}: {h.tag} ({h.where}) in ...{h.context}...")
    if len(rep.hits) > 50:
        print(f"  ... and {len(rep.hits) - 50} more")
    for u in rep.unreadable:
        print(f"  could not read: {u}")
    if args.report:
        d = dataclasses.asdict(rep)
        d["ok"] = rep.ok
        atomic.write_json(args.report, d)
    return 0 if rep.ok else 1
