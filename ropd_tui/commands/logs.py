"""``ropd-tui --headless logs RUN [-f] [--raw]``: print (and follow) a run's log.

Control characters in the log (a model's output can hold ``\\x1b]0;...`` or ``\\x1b[2J``) are shown as
visible escapes so they cannot drive the terminal, and progress bars (tqdm) are left out; ``--raw``
prints the bytes as written.
"""

from __future__ import annotations

import argparse
import sys

from ._output import term_safe, warn
from ._runs_common import add_run_arg, open_store


def register(subparsers) -> None:
    p = subparsers.add_parser("logs", help="print a run's log (stdout and stderr of the trainer)",
                              description="Print the run's log file. With -f, keep printing new lines until the run "
                              "ends (Ctrl-C stops following; the run keeps going). Terminal control characters are "
                              "shown as escapes (\\x1b ...) unless --raw.")
    add_run_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")
    p.add_argument("-n", "--lines", type=int, help="start with only the last N lines")
    p.add_argument("--raw", action="store_true", help="print the log exactly as written: control characters "
                   "included, and the progress bars (tqdm) the trainer wrote")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor, is_progress_bar

    def shown(line: str) -> bool:
        return args.raw or not is_progress_bar(line)

    show = (lambda line: line) if args.raw else (lambda line: term_safe(line))
    with open_store(args) as store:
        rec = store.get_run(args.run)
        if not rec.log_path.exists() and not args.follow:
            warn(f"run {rec.name} has no log yet ({rec.log_path})")
            return 0
        out = sys.stdout
        if args.lines is not None and rec.log_path.exists():
            for line in _last_lines(rec.log_path, args.lines, shown):
                out.write(show(line) + "\n")
            lines = Supervisor(store).follow_log(rec, from_start=False, follow=args.follow)
        else:
            lines = Supervisor(store).follow_log(rec, from_start=True, follow=args.follow)
        for line in lines:
            if not shown(line):
                continue
            out.write(show(line) + "\n")
            if args.follow:
                out.flush()
    return 0


def _last_lines(path, n: int, keep=lambda _line: True) -> list[str]:
    if n <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max(64 * 1024, n * 2048)))
        data = f.read()
    return [ln for ln in data.decode("utf-8", "replace").splitlines() if keep(ln)][-n:]
