"""Helpers shared by the run commands (runs, status, stop, resume, restart, logs, metrics, export,
delete): opening the store from ``--store``, formatting times. Standard library + engine only."""

from __future__ import annotations

import argparse
import time

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_run_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="run name or numeric id (see: ropd-tui --headless runs)")


def open_store(args: argparse.Namespace, *, create: bool = False):
    from engine.store import RunStore, resolve_store_path

    return RunStore(resolve_store_path(getattr(args, "store", None)), create=create)


def store_exists(args: argparse.Namespace) -> bool:
    from engine.store import resolve_store_path

    return resolve_store_path(getattr(args, "store", None)).exists()


def fmt_time(ts: float | None) -> str:
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def fmt_age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return ""
    s = max(0.0, (now or time.time()) - ts)
    if s < 60:
        return f"{s:.0f}s ago"
    if s < 3600:
        return f"{s / 60:.0f}m ago"
    if s < 86400:
        return f"{s / 3600:.1f}h ago"
    return f"{s / 86400:.1f}d ago"


def one_line(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    t = " ".join(str(text).split())
    return t if len(t) <= width else t[: width - 1] + "…"


def report_launched(args: argparse.Namespace, rec, what: str) -> None:
    """Print a (re)launched run: JSON for scripts, one line for people (``what``: "resumed run X ...")."""
    from ._output import echo, print_json

    if args.json:
        print_json({"id": rec.id, "name": rec.name, "status": rec.status, "monitor_pid": rec.monitor_pid,
                    "attempt": rec.attempt, "log": str(rec.log_path)})
    else:
        echo(f"{what} (monitor pid {rec.monitor_pid}); log: {rec.log_path}")
