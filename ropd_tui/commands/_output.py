"""Plain-text tables and JSON output for headless commands (no rich, no textual)."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence


def print_json(obj: Any, file=None) -> None:
    json.dump(obj, file or sys.stdout, indent=2, ensure_ascii=False, default=str)
    (file or sys.stdout).write("\n")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [["" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], file=None) -> None:
    print(format_table(headers, rows), file=file or sys.stdout)


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
