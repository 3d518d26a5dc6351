"""``ropd-tui --headless logs RUN [-f]``: print (and follow) a run's log."""

from __future__ import annotations

import argparse
import sys

from ._runs_common import add_run_arg, open_store


def register(subparsers) -> None:
    p = subparsers.add_parser("logs", help="print a run's log (stdout and stderr of the trainer)",
                              description="Print the run's log file. With -f, keep printing new lines until the run "
                              "ends (Ctrl-C stops following; the run keeps going).")
    add_run_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")
    p.add_argument("-n", "--lines", type=int, help="start with only the last N lines")
    p.add_argument("--raw", action="store_true", help="also show progress bars (tqdm) the trainer wrote")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from engine.runs.supervisor import Supervisor, is_progress_bar

    def shown(line: str) -> bool:
        return args.raw or not is_progress_bar(line)

    with open_store(args) as store:
        rec = store.get_run(args.run)
        if not rec.log_path.exists() and not args.follow:
            print(f"run {rec.name} has no log yet ({rec.log_path})", file=sys.stderr)
            return 0
        if args.lines is not None and rec.log_path.exists():
            for line in _last_lines(rec.log_path, args.lines, shown):
                print(line)
            lines = Supervisor(store).follow_log(rec, from_start=False, follow=args.follow)
        else:
            lines = Supervisor(store).follow_log(rec, from_start=True, follow=args.follow)
        out = sys.stdout
        for line in lines:
            if not shown(line):
                continue
            out.write(line + "\n")
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
