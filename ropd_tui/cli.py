"""Entry point: ``ropd-tui`` opens the Textual app; ``ropd-tui --headless CMD ...`` runs a command.

Headless commands live one per module in :mod:`ropd_tui.commands` and are discovered automatically;
each module defines ``register(subparsers)``. The headless path never imports textual: command
modules import only :mod:`engine` and the standard library (checked by a test in a subprocess).

Exit codes: 0 success; 1 the run/command finished unsuccessfully; 2 bad input (config, template,
arguments, unknown run); 3 judge unreachable/misconfigured; 4 scoring failure rate over threshold;
130 interrupted by the user.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from engine.errors import UserError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ropd-tui",
        description="Experiment manager for Rubric-based On-Policy Distillation. "
        "Without --headless, opens the terminal UI.",
    )
    parser.add_argument("--headless", action="store_true", help="run a command without the UI")
    parser.add_argument("--store", help="run store path (default: $ROPD_STORE or ./runs/ropd.db)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if args.headless:
            parser.print_help()
            return EXIT_USAGE
        return _run_tui(args)
    try:
        rc = args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(rc or 0)


def _run_tui(args: argparse.Namespace) -> int:
    try:
        from .app import run_app
    except ImportError as err:  # pragma: no cover - only when the UI deps are missing
        print(f"error: the UI could not start ({err}); headless commands still work: ropd-tui --headless --help",
              file=sys.stderr)
        return EXIT_USAGE
    return run_app(store=args.store)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
