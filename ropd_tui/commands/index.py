"""``ropd-tui --headless index build|import|show``: build (or resume) from a teacher model, import teacher
answers you already have, and inspect the offline teacher index."""

from __future__ import annotations

import argparse
import json

from ._output import add_json_flag, echo, print_json, warn


def _teacher_default(name: str):
    from engine.config import JudgeConfig

    return getattr(JudgeConfig().teacher, name)


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build, import or inspect the offline teacher index",
                              description="The teacher index holds K teacher answers per prompt (JSONL keyed by "
                              "a canonical prompt hash), built once before training.")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = sub.add_parser("build", help="ask a teacher model for answers to every prompt (resumable)",
                       description="Ask an OpenAI-compatible teacher model for N answers per prompt and append them "
                       "to the index. Prompts already answered are skipped, so an interrupted build can simply be "
                       "run again. The API key is read from $OPENAI_API_KEY (or --api-key-env).")
    b.add_argument("--prompts", required=True, help='JSONL file, one {"prompt": str | chat messages} per line '
                   "(or a Parquet/CSV file with a prompt column, e.g. the task's verl parquet)")
    b.add_argument("--prompt-key", help="column of the prompt in a Parquet/CSV/JSONL file (default: prompt, else "
                   "messages; dots reach into nested columns)")
    b.add_argument("--out", required=True, help="index file to create or extend (JSONL)")
    b.add_argument("--teacher-model", help="teacher model name (default: $ROPD_TEACHER_MODEL or judge.teacher.model)")
    b.add_argument("--answers", type=int, default=4, help="answers per prompt (K, default 4)")
    b.add_argument("--base-url", help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL, then api.openai.com)")
    b.add_argument("--api-key-env", help="name of the env var holding the API key (default OPENAI_API_KEY)")
    b.add_argument("--temperature", type=float, help="sampling temperature (default judge.teacher.temperature, "
                   f"{_teacher_default('temperature')})")
    b.add_argument("--max-tokens", type=int, help="max tokens per answer")
    b.add_argument("--concurrency", type=int, help="requests in flight (default judge.concurrency)")
    b.add_argument("--config", help="config file (judge.teacher and judge.* settings)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. judge.teacher.timeout_s=60")
    b.set_defaults(func=build_handler)
    i = sub.add_parser("import", help="build or top up an index from teacher answers you already have",
                       description="Read teacher outputs (an SFT set, an earlier API run, verl's generation output) "
                       "from a JSONL, Parquet or CSV file: a prompt and one or more responses per row, several rows "
                       "per prompt allowed. Rows are grouped by the canonical prompt hash (the index key). An existing "
                       "index is topped up; answers it already has are skipped, so an interrupted import is simply "
                       "run again.")
    i.add_argument("--from", dest="source", required=True, metavar="FILE",
                   help="teacher outputs: JSONL, Parquet or CSV")
    i.add_argument("--out", required=True, help="index file to create or extend (JSONL)")
    i.add_argument("--prompt-key", help="column of the prompt, a string or chat messages (default: prompt, else "
                   "messages; dots reach into nested columns)")
    i.add_argument("--response-key", help="column of the response(s): a string, a list of strings or assistant "
                   "messages (default: response, responses or completion; without one, chat messages ending with "
                   "an assistant turn are split into prompt and answer)")
    i.add_argument("--teacher-model", help="the model that wrote the answers (recorded in each row's settings)")
    i.add_argument("--k", type=int, default=4, help="report prompts with fewer than K answers (scorer.k, default 4)")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=import_handler)
    s = sub.add_parser("show", help="summarise an index file")
    s.add_argument("path", help="index file (JSONL)")
    s.add_argument("--k", type=int, default=4, help="report prompts with fewer than K answers (scorer.k, default 4)")
    add_json_flag(s)
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
    from engine.files import check_input_file, check_output_file

    from pathlib import Path

    if Path(args.prompts).exists():  # (a missing file is named by the build, with a hint)
        check_input_file(args.prompts, "--prompts")
    check_output_file(args.out, "--out")  # before any teacher request
    ep = cfg.judge.teacher
    if not ep.model:
        raise ConfigError("no teacher model given",
                          hint="pass --teacher-model MODEL (or set ROPD_TEACHER_MODEL / judge.teacher.model)")
    warn(f"building teacher index {args.out} from {args.prompts}: {args.answers} answers per prompt from "
         f"{ep.model or '?'}")
    summary = build_index(args.prompts, args.out, ep, args.answers, judge_cfg=cfg.judge,
                          concurrency=args.concurrency, progress=not args.quiet, prompt_key=args.prompt_key)
    for line in summary.lines():
        echo(line)
    return 1 if summary.failed else 0


def import_handler(args: argparse.Namespace) -> int:
    from engine.errors import ConfigError
    from engine.teacher.importer import import_index

    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    warn(f"importing teacher answers from {args.source} into {args.out}")
    summary = import_index(args.source, args.out, prompt_key=args.prompt_key, response_key=args.response_key,
                           teacher_model=args.teacher_model, k=args.k, progress=not args.quiet)
    for line in summary.lines():
        echo(line)
    return 0


def show_handler(args: argparse.Namespace) -> int:
    from collections import Counter

    from engine.errors import ConfigError
    from engine.teacher.importer import short_answer_lines, short_prompts
    from engine.teacher.index import TeacherIndex, identical_answers_warning
    from engine.wording import plural

    if args.k < 1:
        raise ConfigError(f"--k must be >= 1, got {args.k}")
    idx = TeacherIndex.load(args.path)
    counts = Counter(len(r["answers"]) for r in idx.rows.values())
    settings = idx.settings
    other = sum(1 for r in idx.rows.values() if (r.get("settings") or {}) != settings)
    short = sorted(short_prompts(idx, args.k), key=lambda item: item[1])
    identical = identical_answers_warning(idx.identical_answer_rows(), len(idx), args.path)
    warnings = idx.warnings + ([identical] if identical else [])
    if args.json:
        print_json({"path": str(args.path), "prompts": len(idx), "answers_per_prompt": dict(sorted(counts.items())),
                    "settings": settings, "rows_with_other_settings": other, "k": args.k,
                    "prompts_with_fewer_than_k": len(short), "warnings": warnings})
        return 0
    echo(f"{args.path}: {plural(len(idx), 'prompt')}")
    echo("  answers per prompt: " + (", ".join(f"{k} ({plural(v, 'prompt')})" for k, v in sorted(counts.items()))
                                     or "-"))
    if settings:
        echo("  built with: " + ", ".join(f"{k} {v if isinstance(v, str) else json.dumps(v)}"
                                          for k, v in settings.items()))
    else:
        echo("  built with: (no settings recorded)")
    if other:
        echo(f"  {plural(other, 'row')} built with other settings")
    for line in short_answer_lines(short, args.k, of=len(idx)):
        echo(line)
    for w in warnings:
        echo(f"  warning: {w}")
    return 0
