"""``spine-ssl merge C [SRC ...]``: join the manifests of ``index``/``extract`` shards into one cohort."""

NAME = "merge"
HELP = "join the manifests of index/extract shards (--shard I/N) into one cohort"
DESCRIPTION = (HELP + ".  Reads C/shards/index-I-of-N/ and C/shards/extract-I-of-N/ (and those under each SRC "
               "cohort folder, whose volume files are copied into C) and writes C/series.csv, sources.csv, "
               "index.json, errors.csv and, with extraction shards, volumes.csv and scans.csv: the files one "
               "unsharded run writes.  Idempotent.  Refuses shards of another salt or configuration, and "
               "incomplete sets.  Exit codes: 0 merged; 2 bad input.")


def add_arguments(parser):
    parser.add_argument("cohort", help="cohort folder (C) to merge into")
    parser.add_argument("sources", nargs="*", help="further cohort folders whose shards/ to merge (same salt)")


def run(args) -> int:
    from ..shard import merge

    s = merge(args.cohort, args.sources)
    parts = []
    if s.index_shards:
        parts.append(f"{s.index_shards} index shards -> {s.n_series} series")
    if s.extract_shards:
        parts.append(f"{s.extract_shards} extraction shards -> {s.n_volumes} volumes")
    copied = f"; {s.copied} volume file(s) copied in" if s.copied else ""
    print(f"merge: {'; '.join(parts)}{copied}; wrote {', '.join(s.written)} in {args.cohort}")
    return 0
