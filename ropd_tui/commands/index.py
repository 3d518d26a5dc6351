"""``ropd-tui --headless index build|show``: build (or resume) and inspect the offline teacher index."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build or inspect the offline teacher index",
                              description="The teacher index holds K teacher answers per prompt (JSONL keyed by "
                              "a canonical prompt hash), built once before training.")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = sub.add_parser("build", help="ask a teacher model for answers to every prompt (resumable)",
                       description="Ask an OpenAI-compatible teacher model for N answers per prompt and append them "
                       "to the index. Prompts already answered are skipped, so an interrupted build can simply be "
                       "run again. The API key is read from $OPENAI_API_KEY (or --api-key-env).")
    b.add_argument("--prompts", required=True, help='JSONL file, one {"prompt": str | chat messages} per line')
    b.add_argument("--out", required=True, help="index file to create or extend (JSONL)")
    b.add_argument("--teacher-model", help="teacher model name (default: $ROPD_TEACHER_MODEL or judge.teacher.model)")
    b.add_argument("--answers", type=int, default=4, help="answers per prompt (K, default 4)")
    b.add_argument("--base-url", help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL, then api.openai.com)")
    b.add_argument("--api-key-env", help="name of the env var holding the API key (default OPENAI_API_KEY)")
    b.add_argument("--temperature", type=float, help="sampling temperature (default judge.teacher.temperature, 0.7)")
    b.add_argument("--max-tokens", type=int, help="max tokens per answer")
    b.add_argument("--concurrency", type=int, help="requests in flight (default judge.concurrency)")
    b.add_argument("--config", help="config file (judge.teacher and judge.* settings)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. judge.teacher.timeout_s=60")
    b.set_defaults(func=build_handler)
    s = sub.add_parser("show", help="summarise an index file")
    s.add_argument("path", help="index file (JSONL)")
    s.add_argument("--json", action="store_true", help="machine-readable JSON output")
    s.set_defaults(func=show_handler)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def build_handler(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.errors import ConfigError
    from engine.teacher.index import build_index

    overrides = list(args.overrides)
    for flag, key in (("teacher_model", "model"), ("base_url", "base_url"), ("api_key_env", "api_key_env"),
                      ("temperature", "temperature"), ("max_tokens", "max_tokens")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"judge.teacher.{key}={value}")
    if args.concurrency is not None:
        overrides.append(f"judge.concurrency={args.concurrency}")
    if args.answers < 1:
        raise ConfigError(f"--answers must be >= 1, got {args.answers}")
    cfg = load_config(args.config, overrides)
    ep = cfg.judge.teacher
    if not ep.model:
        raise ConfigError("no teacher model given",
                          hint="pass --teacher-model MODEL (or set ROPD_TEACHER_MODEL / judge.teacher.model)")
    print(f"building teacher index {args.out} from {args.prompts}: {args.answers} answers per prompt from "
          f"{ep.model or '?'}", file=sys.stderr)
    summary = build_index(args.prompts, args.out, ep, args.answers, judge_cfg=cfg.judge,
                          concurrency=args.concurrency, progress=not args.quiet)
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0


def show_handler(args: argparse.Namespace) -> int:
    from collections import Counter

    from engine.teacher.index import TeacherIndex

    import json

    from engine.wording import plural

    from ._output import print_json

    idx = TeacherIndex.load(args.path)
    counts = Counter(len(r["answers"]) for r in idx.rows.values())
    settings = idx.settings
    other = sum(1 for r in idx.rows.values() if (r.get("settings") or {}) != settings)
    if getattr(args, "json", False):
        print_json({"path": str(args.path), "prompts": len(idx), "answers_per_prompt": dict(sorted(counts.items())),
                    "settings": settings, "rows_with_other_settings": other, "warnings": idx.warnings})
        return 0
    print(f"{args.path}: {plural(len(idx), 'prompt')}")
    print("  answers per prompt: " + (", ".join(f"{k} ({plural(v, 'prompt')})" for k, v in sorted(counts.items()))
                                      or "-"))
    if settings:
        print("  built with: " + ", ".join(f"{k} {v if isinstance(v, str) else json.dumps(v)}"
                                           for k, v in settings.items()))
    else:
        print("  built with: (no settings recorded)")
    if other:
        print(f"  {plural(other, 'row')} built with other settings")
    for w in idx.warnings:
        print(f"  warning: {w}")
    return 0
