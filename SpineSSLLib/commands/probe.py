"""``spine-ssl probe``: k-NN and linear probes of a pretrained trunk's frozen features."""

from __future__ import annotations

NAME = "probe"
HELP = "k-NN and linear probes of a pretrained trunk (VB level, disc grade) vs random weights and raw pixels"
DESCRIPTION = (HELP + ". Frozen pool5 features; probes fitted on training subjects, scored on held-out "
               "subjects (balanced accuracy). Writes OUT/probe.json and OUT/probe.md. Exit codes: 0 done; 2 bad input.")


def add_arguments(p):
    p.add_argument("checkpoint", help="pretraining output folder (uses best/) or a checkpoint folder")
    p.add_argument("cohort", help="cohort folder with volumes.csv")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--splits", help="pretraining splits.json (default: the one beside the checkpoint)")
    p.add_argument("--k", type=int, default=20, help="neighbours of the k-NN probe (default 20)")
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from .. import progress
    from ..probe import ProbeConfig, probe_checkpoint, probe_markdown

    res = probe_checkpoint(args.checkpoint, args.cohort, args.out, splits_path=args.splits,
                           config=ProbeConfig(k=args.k, device=args.device), progress=progress._enabled)
    print(probe_markdown(res))
    return 0
