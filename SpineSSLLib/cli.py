"""The ``spine-ssl`` command line.

Subcommands live in ``SpineSSLLib/commands/<name>.py``; each module defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``.  They are discovered at start-up so the
pipeline stages stay independent of each other.

Exit codes (documented in docs/cli.md):
  0 success; 1 finished, but some items failed (see the errors table);
  2 bad input or usage (one-line message); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback

from . import __version__
from .errors import SpineSSLError

EXIT_OK, EXIT_PARTIAL, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _command_modules():
    from . import commands

    mods = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{commands.__name__}.{info.name}"))
    order = getattr(commands, "ORDER", [])
    mods.sort(key=lambda m: (order.index(m.NAME) if m.NAME in order else len(order), m.NAME))
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spine-ssl",
        description="SpineSSL: longitudinal self-supervised pretraining and disc-degeneration "
        "grading for sagittal T2 lumbar spine MRI.",
    )
    parser.add_argument("--version", action="version", version=f"spine-ssl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        from . import progress

        progress.set_enabled(False)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args._run(args) or 0)
    except SpineSSLError as e:
        if args.debug:
            traceback.print_exc()
        print(f"spine-ssl {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"spine-ssl {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
