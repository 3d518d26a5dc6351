"""``ropd-tui --headless search RUN "QUERY" [--kind criterion|student|teacher|reply] [--json]``: full-text
search over a run's criterion texts, student and teacher answers and raw judge replies."""

from __future__ import annotations

import argparse
import sys

from ._output import add_json_flag, print_json, print_table
from ._runs_common import add_run_arg, open_store

KIND_CHOICES = ("criterion", "student", "teacher", "reply")  # engine.store.search.KINDS (kept import-free here)
_CONTROL = {i: None for i in (*range(32), *range(127, 160))}  # terminal control characters in model text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "search", help="full-text search of a run's rubrics, answers and judge replies",
        description="Search a run's criterion texts, student and teacher answers and raw judge replies "
        "(current attempt unless --attempt). QUERY uses SQLite FTS5 syntax: words (all must occur; "
        "'units' also finds 'unit'), \"exact phrases\", prefix*, AND / OR / NOT, NEAR(a b, 5). Matches "
        "are listed by step, prompt and kind, with the matched words marked **like this**.")
    add_run_arg(p)
    p.add_argument("query", metavar="QUERY", help='what to look for, e.g. units, "I cannot", format AND final')
    p.add_argument("--kind", action="append", choices=KIND_CHOICES,
                   help="search only this kind of text (repeatable; default: all four)")
    p.add_argument("--limit", type=int, default=50, help="at most this many matches (default 50)")
    p.add_argument("--literal", action="store_true",
                   help="search the words as typed (quotes, AND, '-' and ':' lose their special meaning)")
    p.add_argument("--attempt", type=int, help="attempt number (default: the current one)")
    add_json_flag(p)
    p.set_defaults(func=handler)


def _clean(text: str) -> str:
    return text.translate(_CONTROL)


def marked(parts: list[tuple[str, bool]], tty: bool) -> str:
    """A snippet for a terminal: control characters removed (model text must not drive the terminal),
    matched words in reverse video on a terminal, between ** elsewhere."""
    on, off = ("\x1b[7m", "\x1b[27m") if tty else ("**", "**")
    return "".join(f"{on}{_clean(t)}{off}" if hit else _clean(t) for t, hit in parts)


def handler(args: argparse.Namespace) -> int:
    if args.limit < 1:
        print("error: --limit must be at least 1", file=sys.stderr)
        return 2
    with open_store(args) as store:
        rec = store.get_run(args.run)
        told = []

        def indexing(done: int, total: int) -> None:
            if total >= 5000 and not told:
                told.append(True)
                print(f"indexing {total:,} texts written since the last search…", file=sys.stderr, flush=True)

        page = store.search(rec.id, args.query, kinds=args.kind, limit=args.limit, literal=args.literal,
                            attempt=args.attempt, progress=indexing)
        attempt = args.attempt if args.attempt is not None else rec.attempt
    if args.json:
        print_json({"run": rec.name, "run_id": rec.id, "attempt": attempt, "query": args.query,
                    "kinds": list(page.kinds), "literal": bool(args.literal),
                    "hits": [h.to_dict() for h in page.hits], "more": page.cursor is not None})
        return 0
    if not page.hits:
        print(f"no matches for {args.query!r} in run {rec.name} ({', '.join(page.kinds)})", file=sys.stderr)
        return 0
    tty = sys.stdout.isatty()
    print_table(["step", "prompt", "kind", "item", "match"],
                [(h.step, h.prompt, h.kind, _clean(h.item), marked(h.parts, tty)) for h in page.hits])
    more = f"; more with --limit {args.limit * 2}" if page.cursor is not None else ""
    print(f"{len(page.hits)} matches in run {rec.name}{more}", file=sys.stderr)
    return 0
