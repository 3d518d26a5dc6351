"""Entry point: ``ropd-tui`` opens the Textual app; ``ropd-tui --headless CMD ...`` runs a command.

Headless commands live one per module in :mod:`ropd_tui.commands` and are discovered automatically;
each module defines ``register(subparsers)``. The headless path never imports textual: command
modules import only :mod:`engine` and the standard library (checked by a test in a subprocess).

Exit codes: 0 success; 1 the run/command finished unsuccessfully; 2 bad input (config, template,
arguments, unknown run); 3 judge unreachable/misconfigured; 4 scoring failure rate over threshold;
130 interrupted by the user; 141 the reader of the output went away (``| head``), said nothing.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
from pathlib import Path

from ropd_tui.package_check import exit_if_engine_is_foreign

exit_if_engine_is_foreign()  # before the first import of engine: a user's own engine/ would fail obscurely

from engine.errors import UserError  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ropd-tui",
        description="Experiment manager for Rubric-based On-Policy Distillation. "
        "Without --headless, opens the terminal UI.",
    )
    parser.add_argument("--headless", action="store_true", help="run a command without the UI")
    parser.add_argument("--store", help="run store path (default: $ROPD_STORE or ./runs/ropd.db)")
    parser.add_argument("--serve", action="store_true",
                        help="serve the UI to web browsers instead of this terminal (each browser tab runs its own "
                        "app process over the same store; runs are unaffected)")
    parser.add_argument("--host", default="localhost", help="with --serve: address to listen on (default: localhost)")
    parser.add_argument("--port", type=int, default=8000, help="with --serve: port (default: 8000)")
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
        if args.serve:
            return _serve(args)
        return _run_tui(args)
    from .commands._output import warn

    try:
        rc = args.func(args)
        sys.stdout.flush()  # inside the try: a reader that went away (`| head`) is handled below
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except UserError as err:
        warn(f"error: {err}")
        return err.exit_code
    except OSError as err:
        from engine.files import is_disk_full, os_error_hint

        if not (is_disk_full(err) or err.errno == errno.EROFS):
            raise  # anything else is a bug: keep the traceback
        hint = os_error_hint(err, getattr(err, "filename", None))
        warn(f"error: {err}" + (f"\n  hint: {hint}" if hint else ""))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(rc or 0)


def _drop_stdout() -> None:
    """The reader of our output closed the pipe (``ropd-tui --headless export RUN | head``): stop
    quietly, like other Unix tools, and keep Python from complaining when it flushes at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _run_tui(args: argparse.Namespace) -> int:
    try:
        from .app import run_app
    except ImportError as err:  # pragma: no cover - only when the UI deps are missing
        print(f"error: the UI could not start ({err}); headless commands still work: ropd-tui --headless --help",
              file=sys.stderr)
        return EXIT_USAGE
    return run_app(store=args.store)


def serve_command(store: str | None) -> str:
    """The shell command each browser tab runs: this same program's UI on the same store."""
    import shlex

    from engine.runs.entrypoint import module_argv

    parts = module_argv("ropd_tui.cli", *(["--store", str(Path(store).resolve())] if store else []))
    return shlex.join(parts)


def _serve(args: argparse.Namespace) -> int:
    try:
        from textual_serve.server import Server
    except ImportError:
        print("error: serving to a browser needs the textual-serve package: pip install textual-serve", file=sys.stderr)
        return EXIT_USAGE
    print(f"serving the ropd-tui UI at http://{args.host}:{args.port} (Ctrl-C stops serving; runs keep going)")
    Server(serve_command(args.store), host=args.host, port=args.port, title="ropd-tui").serve()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
