"""The offline teacher index: K teacher answers per prompt, built once before training.

File format: JSON Lines, one row per prompt::

    {"key": "<sha256 of the canonical JSON of the prompt>", "prompt": <str or chat messages>,
     "answers": ["...", ...], "settings": {"model": ..., "temperature": ..., ...}}

The key is :func:`engine.types.prompt_hash` (independent of any uid, URL or timeout). When a key
appears on several rows the last row wins, so the builder can top up a prompt by appending.

Crash safety: rows are appended whole, flushed and fsynced one at a time. A crash can at worst leave
a partial last line; :meth:`TeacherIndex.load` ignores it (with a warning) and the builder cuts it off
before appending, then regenerates that prompt. A bad line anywhere else is an error naming the line.

Lookup misses raise :class:`~engine.errors.TeacherIndexError` naming the prompt and the file and
saying how to build the missing answers. A prompt given as a string also matches a row whose prompt
is the same text as a single user message (and the reverse), since trainers and index builders often
disagree on that.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from engine.errors import JudgeError, TeacherIndexError, one_line
from engine.types import Prompt, prompt_hash, prompt_text

log = logging.getLogger(__name__)

BUILD_HINT = "ropd-tui --headless index build --prompts PROMPTS.jsonl --out {path} --teacher-model MODEL --answers {k}"


shorten = one_line  # the name the commands import


def _messages_for(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _alias_keys(prompt: Prompt) -> list[str]:
    """Keys of the other common spellings of the same prompt (string <-> single user message)."""
    if isinstance(prompt, str):
        return [prompt_hash([{"role": "user", "content": prompt}])]
    if len(prompt) == 1 and prompt[0].get("role") == "user" and isinstance(prompt[0].get("content"), str):
        return [prompt_hash(prompt[0]["content"])]
    return []


# ---------------------------------------------------------------------------------------------
# reading

class TeacherIndex:
    """A loaded teacher index (read-only view of a JSONL file)."""

    def __init__(self, path: str | Path, rows: dict[str, dict[str, Any]], warnings: list[str] | None = None):
        self.path = Path(path)
        self.rows = rows
        self.warnings: list[str] = list(warnings or [])
        self._warned_short: set[str] = set()

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, expected_settings: dict[str, Any] | None = None) -> "TeacherIndex":
        """Read an index file. ``expected_settings``: warn (never fail) on rows built differently."""
        p = Path(path)
        if not p.exists():
            raise TeacherIndexError(f"teacher index not found: {p}",
                                    hint="build it: " + BUILD_HINT.format(path=p, k=4))
        if p.is_dir():
            raise TeacherIndexError(f"teacher index {p} is a directory, not a file",
                                    hint="point teacher.index at the index's JSONL file")
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise TeacherIndexError(f"teacher index {p} cannot be read: {e.strerror or e}") from None
        rows, warnings = parse_index_bytes(raw, str(p))
        index = cls(p, rows, warnings)
        if expected_settings is not None:
            index.check_settings(expected_settings)
        for w in warnings:
            log.warning(w)
        return index

    # -- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, prompt: Prompt) -> bool:
        return self._row(prompt) is not None

    @property
    def settings(self) -> dict[str, Any]:
        """The settings most rows were built with ({} for an empty index)."""
        counts = Counter(json.dumps(r.get("settings") or {}, sort_keys=True) for r in self.rows.values())
        return json.loads(counts.most_common(1)[0][0]) if counts else {}

    def check_settings(self, expected: dict[str, Any]) -> list[str]:
        """Warnings (also logged and kept in ``.warnings``) for settings that differ from ``expected``."""
        found = self.settings
        diffs = [f"{k}: index has {found.get(k)!r}, config has {v!r}" for k, v in sorted(expected.items())
                 if v is not None and k in found and found.get(k) != v]
        out = []
        if diffs:
            msg = f"teacher index {self.path} was built with different settings ({'; '.join(diffs)}); using it anyway"
            out.append(msg)
            log.warning(msg)
        self.warnings += out
        return out

    def identical_answer_rows(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Rows (of ``keys``, default all) holding two or more answers that are all the same text: the
        K-answer contrast of ROPD collapses to a single answer there."""
        rows = self.rows.values() if keys is None else [self.rows[k] for k in keys if k in self.rows]
        return [r for r in rows if len(r["answers"]) >= 2 and len({a.strip() for a in r["answers"]}) == 1]

    def row_for(self, prompt: Prompt) -> dict[str, Any] | None:
        """The stored row of ``prompt`` (``key``, ``prompt`` as stored, ``answers``, ``settings``), or None."""
        return self._row(prompt)

    def _row(self, prompt: Prompt) -> dict[str, Any] | None:
        row = self.rows.get(prompt_hash(prompt))
        if row is None:
            for key in _alias_keys(prompt):
                row = self.rows.get(key)
                if row is not None:
                    break
        return row

    def answers_for(self, prompt: Prompt) -> list[str] | None:
        """All stored answers for a prompt, or None when it is not in the index."""
        row = self._row(prompt)
        return None if row is None else list(row["answers"])

    def lookup(self, prompt: Prompt, k: int, *, strict: bool = False) -> list[str]:
        """The first ``k`` teacher answers for ``prompt``.

        A prompt with fewer than ``k`` (but at least one) answers returns what there is, with a
        warning once per prompt; ``strict=True`` makes that an error instead.
        """
        if k <= 0:
            return []
        row = self._row(prompt)
        if row is None or not row["answers"]:
            what = "no teacher answers" if row is None else "an empty answer list"
            raise TeacherIndexError(
                f"{what} for prompt {shorten(prompt_text(prompt))!r} (key {prompt_hash(prompt)[:12]}) "
                f"in teacher index {self.path}",
                hint="add it with: " + BUILD_HINT.format(path=self.path, k=k) + " (the builder skips prompts "
                "already answered)")
        answers = list(row["answers"])
        if len(answers) < k:
            msg = (f"teacher index {self.path} has {len(answers)} answer(s) for prompt "
                   f"{shorten(prompt_text(prompt), 60)!r} but k={k}; using {len(answers)}")
            if strict:
                raise TeacherIndexError(msg.replace("; using", "; would use"),
                                        hint="top it up: " + BUILD_HINT.format(path=self.path, k=k))
            key = row["key"]
            if key not in self._warned_short:
                self._warned_short.add(key)
                self.warnings.append(msg)
                log.warning(msg)
        return answers[:k]


def identical_answers_warning(rows: Sequence[dict[str, Any]], total: int, path: str | Path) -> str | None:
    """The warning for rows whose answers are all identical (None when there are none), naming an example,
    the temperature they were built with and the fix."""
    if not rows:
        return None
    first = rows[0]
    temps = sorted({str((r.get("settings") or {}).get("temperature")) for r in rows})
    shown = [shorten(a, 30) for a in first["answers"][:4]]
    return (f"{len(rows)} of {total} prompt(s) in {path} have identical teacher answers, e.g. "
            f"{shorten(prompt_text(first['prompt']), 50)!r}: {shown}; K identical answers give the rubricator "
            f"nothing to contrast (K collapses to 1). They were sampled at temperature {', '.join(temps)}: "
            f"rebuild them with a sampling temperature (index build --temperature 0.7, the judge.teacher "
            f"default) after removing those rows or the file")


def parse_index_bytes(raw: bytes, source: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Rows by key from index file contents; a partial last line (crash) is skipped with a warning."""
    rows: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    if b"\0" in raw[:65536]:  # no JSONL text holds a NUL byte: this is not an index, whatever its name
        raise TeacherIndexError(f"{source} is not a teacher index: it holds binary data (NUL bytes)",
                                hint="point teacher.index at a JSONL index (build one with ropd-tui --headless index build)")
    lines = raw.split(b"\n")
    complete_file = raw.endswith(b"\n") or not raw
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        is_tail = lineno == len(lines) and not complete_file
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            # Only a cut-off JSON object looks like an interrupted append; anything else is not an index row.
            cut_mid_char = isinstance(e, UnicodeDecodeError) and e.reason == "unexpected end of data"
            if is_tail and line.lstrip().startswith(b"{") and (cut_mid_char or not isinstance(e, UnicodeDecodeError)):
                warnings.append(f"{source}: line {lineno} is incomplete (interrupted write?); ignoring it")
                continue
            if isinstance(e, UnicodeDecodeError):
                raise TeacherIndexError(f"{source}: line {lineno} is not UTF-8 text (byte 0x{line[e.start:e.start + 1].hex()} "
                                        f"at column {e.start + 1}): not a teacher index?",
                                        hint="point teacher.index at a JSONL index (ropd-tui --headless index build)") from None
            raise TeacherIndexError(f"{source}: line {lineno} is not valid JSON ({e})",
                                    hint="fix or delete that line; the builder will regenerate missing prompts") from None
        problem = _row_problem(row)
        if problem:
            raise TeacherIndexError(f"{source}: line {lineno}: {problem}",
                                    hint='each row must be {"key", "prompt", "answers": [...], "settings": {...}}')
        key = prompt_hash(row["prompt"])
        if row.get("key") not in (None, key):
            warnings.append(f"{source}: line {lineno}: stored key {str(row['key'])[:12]} does not match the prompt's "
                            f"hash {key[:12]}; using the prompt's hash")
        row = {"key": key, "prompt": row["prompt"], "answers": [str(a) for a in row["answers"]],
               "settings": row.get("settings") or {}}
        rows[key] = row
    return rows, warnings


def _row_problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    if "prompt" not in row:
        return 'the row has no "prompt"'
    if not isinstance(row["prompt"], (str, list)):
        return '"prompt" must be a string or a list of chat messages'
    if not isinstance(row.get("answers"), list):
        return 'the row has no "answers" list'
    return None


# ---------------------------------------------------------------------------------------------
# writing

def make_row(prompt: Prompt, answers: Sequence[str], settings: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"key": prompt_hash(prompt), "prompt": prompt, "answers": list(answers), "settings": dict(settings or {})}


def repair_tail(path: Path) -> bool:
    """Cut off a partial last line left by an interrupted write. True when something was cut."""
    if not path.exists():
        return False
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # find the last newline
        pos = size - 1
        chunk = 65536
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                f.flush()
                os.fsync(f.fileno())
                return True
            pos = start
        f.truncate(0)
        f.flush()
        os.fsync(f.fileno())
        return True


class IndexWriter:
    """Appends whole rows to an index file, one fsynced line each (crash-safe, resumable)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = repair_tail(self.path)
        self._f = open(self.path, "ab")

    def write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._f.write(line.encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "IndexWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def append_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Append rows (``{"prompt", "answers", "settings"}``; the key is computed) to an index file."""
    n = 0
    with IndexWriter(path) as w:
        for r in rows:
            w.write(make_row(r["prompt"], r["answers"], r.get("settings")))
            n += 1
    return n


# ---------------------------------------------------------------------------------------------
# building with a teacher model

def read_prompts(path: str | Path, prompt_key: str | None = None) -> list[Prompt]:
    """Prompts from a JSONL file (each line an object with "prompt" (or "messages"), or a JSON string), or
    from the prompt column (``prompt_key``) of a Parquet or CSV file (or a JSONL file, given ``prompt_key``)."""
    from engine.tasks.files import file_format

    p = Path(path)
    if prompt_key or (p.exists() and file_format(p) != "jsonl"):
        return _prompts_from_table(p, prompt_key)
    if not p.exists():
        raise TeacherIndexError(f"prompts file not found: {p}",
                                hint='give a JSONL file with one {"prompt": "..."} (or chat messages) per line')
    from engine.files import check_input_file, iter_utf8_lines

    check_input_file(p, "prompts file", hint='give --prompts a JSONL file with one {"prompt": "..."} per line')
    prompts: list[Prompt] = []
    for lineno, line in iter_utf8_lines(p):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TeacherIndexError(f"{p}: line {lineno} is not valid JSON ({e.msg})",
                                    hint='each line must be {"prompt": "..."} or {"prompt": [chat messages]}') from None
        prompt = obj.get("prompt", obj.get("messages")) if isinstance(obj, dict) else obj
        if not isinstance(prompt, (str, list)) or not prompt:
            raise TeacherIndexError(f"{p}: line {lineno} has no prompt",
                                    hint='each line must be {"prompt": "..."} or {"prompt": [chat messages]}')
        prompts.append(prompt)
    return prompts


def _prompts_from_table(path: Path, prompt_key: str | None) -> list[Prompt]:
    from engine.tasks.files import MISSING, get_field, missing_column_error, normalise_prompt, read_rows

    located = read_rows(path, what="--prompts")
    rows = [r for _, r in located]
    key = prompt_key or next((k for k in ("prompt", "messages") if any(k in r for r in rows)), "prompt")
    if not any(get_field(r, key) is not MISSING for r in rows):
        raise missing_column_error(str(path), rows, key, "--prompt-key", "--prompts")
    prompts = []
    for where, row in located:
        prompt = normalise_prompt(get_field(row, key))
        if prompt is None:
            raise TeacherIndexError(f"{where}: no prompt in {key!r} (a non-empty string or chat messages)",
                                    hint="fix the row, or pass --prompt-key with the prompt column")
        prompts.append(prompt)
    return prompts


@dataclass
class BuildSummary:
    out: str
    total: int  # distinct prompts in the prompts file
    skipped: int  # already had enough answers
    built: int  # rows written by this run
    failed: int
    answers_written: int
    elapsed_s: float
    failures: list[tuple[str, str]] = field(default_factory=list)  # (prompt, error)
    repaired: bool = False
    identical_warning: str | None = None  # prompts of this build whose answers are all the same text

    def lines(self) -> list[str]:
        out = [f"teacher index: {self.out}",
               f"  prompts: {self.total} distinct, {self.skipped} already answered, {self.built} built, "
               f"{self.failed} failed",
               f"  answers written: {self.answers_written} in {self.elapsed_s:.1f}s"]
        if self.repaired:
            out.append("  an incomplete last line from an interrupted run was removed and rebuilt")
        for prompt, err in self.failures[:5]:
            out.append(f"  failed: {prompt!r}: {err}")
        if len(self.failures) > 5:
            out.append(f"  ... and {len(self.failures) - 5} more failures")
        if self.failed:
            out.append("  run the same command again to retry the failed prompts")
        if self.identical_warning:
            out.append(f"  warning: {self.identical_warning}")
        return out


class Progress:
    """A plain-text progress bar on stderr (redrawn in place on a terminal, else every 10%)."""

    def __init__(self, total: int, stream=None, width: int = 30, label: str = "prompts"):
        self.total, self.width, self.label = total, width, label
        self.stream = stream or sys.stderr
        self.done = self.failed = 0
        self.t0 = time.monotonic()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_decile = -1

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        decile = (self.done * 10) // max(self.total, 1)
        if self._tty or decile != self._last_decile or self.done == self.total:
            self._last_decile = decile
            self._draw()

    def _draw(self) -> None:
        frac = self.done / max(self.total, 1)
        filled = int(frac * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        text = (f"[{bar}] {self.done}/{self.total} {self.label}"
                f"{f', {self.failed} failed' if self.failed else ''}  {time.monotonic() - self.t0:.0f}s")
        if self._tty:
            self.stream.write("\r" + text + ("\n" if self.done == self.total else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def teacher_settings(endpoint: Any) -> dict[str, Any]:
    """The generation settings recorded with each row (no URL, key or timeout: they don't change answers)."""
    return {"model": endpoint.model, "temperature": endpoint.temperature, "max_tokens": endpoint.max_tokens,
            "reasoning_effort": endpoint.reasoning_effort}


async def build_index_async(
    prompts: Sequence[Prompt],
    out: str | Path,
    client: Any,
    *,
    answers: int = 4,
    settings: dict[str, Any] | None = None,
    concurrency: int = 16,
    progress: bool = True,
    stream=None,
) -> BuildSummary:
    """Fill ``out`` with ``answers`` teacher answers per prompt using ``client`` (a JudgeClient).

    Prompts that already have enough answers are skipped; prompts with some answers are topped up.
    Each finished prompt is appended at once (fsynced), so an interrupted build loses at most the
    prompts in flight. ``concurrency`` bounds prompts in flight; the client bounds requests.
    """
    from engine.tasks import strip_reasoning

    if answers < 1:
        raise TeacherIndexError("--answers must be >= 1")
    t0 = time.monotonic()
    out = Path(out)
    unique: dict[str, Prompt] = {}
    for p in prompts:
        unique.setdefault(prompt_hash(p), p)
    existing = TeacherIndex(out, {}) if not out.exists() else None
    writer = IndexWriter(out)  # repairs a partial tail first, then we read the clean file
    try:
        if existing is None:
            existing = TeacherIndex.load(out)
        todo: list[tuple[Prompt, list[str]]] = []
        for p in unique.values():
            have = existing.answers_for(p) or []
            if len(have) < answers:
                todo.append((p, have))
        summary = BuildSummary(out=str(out), total=len(unique), skipped=len(unique) - len(todo), built=0,
                               failed=0, answers_written=0, elapsed_s=0.0, repaired=writer.repaired)
        bar = Progress(len(todo), stream=stream) if progress and todo else None
        sem = asyncio.Semaphore(max(1, concurrency))
        settings = dict(settings or {})

        async def one(prompt: Prompt, have: list[str]) -> None:
            async with sem:
                try:
                    need = answers - len(have)
                    comps = await asyncio.gather(*[client.complete(_messages_for(prompt), json_mode=False)
                                                   for _ in range(need)])
                    new = [strip_reasoning(c.text or "").strip() for c in comps]
                    if any(not a for a in new):
                        raise JudgeError("the teacher returned an empty answer")
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - recorded per prompt, the build goes on
                    summary.failed += 1
                    summary.failures.append((shorten(prompt_text(prompt), 60), f"{type(e).__name__}: {e}"))
                    if bar:
                        bar.update(False)
                    return
                writer.write(make_row(prompt, have + new, settings))
                summary.built += 1
                summary.answers_written += len(new)
                if bar:
                    bar.update(True)

        await asyncio.gather(*[one(p, have) for p, have in todo])
    finally:
        writer.close()
    built = TeacherIndex.load(out)
    summary.identical_warning = identical_answers_warning(built.identical_answer_rows(unique), len(unique), out)
    summary.elapsed_s = time.monotonic() - t0
    return summary


def build_index(
    prompts_file: str | Path,
    out: str | Path,
    teacher_endpoint: Any,
    answers: int = 4,
    *,
    judge_cfg: Any = None,
    concurrency: int | None = None,
    progress: bool = True,
    preflight: bool = True,
    stream=None,
    prompt_key: str | None = None,
) -> BuildSummary:
    """Build (or resume) a teacher index from a prompts file (see :func:`read_prompts`) with an
    OpenAI-compatible teacher.

    ``teacher_endpoint`` is an :class:`engine.config.EndpointConfig` (model, base URL, temperature...);
    ``judge_cfg`` a :class:`engine.config.JudgeConfig` (concurrency, retries). A dead or misconfigured
    server fails fast (JudgeError naming the URL) before any prompt is sent.
    """
    from engine.config import JudgeConfig
    from engine.judging.client import JudgeClient, aclose_loop_clients

    if not teacher_endpoint.model:
        raise TeacherIndexError("no teacher model given",
                                hint="pass --teacher-model MODEL (or set ROPD_TEACHER_MODEL / judge.teacher.model)")
    prompts = read_prompts(prompts_file, prompt_key)
    judge_cfg = judge_cfg or JudgeConfig()
    client = JudgeClient(teacher_endpoint, judge_cfg, "teacher")

    async def main() -> BuildSummary:
        try:
            if preflight:
                await client.preflight()
            return await build_index_async(
                prompts, out, client, answers=answers, settings=teacher_settings(teacher_endpoint),
                concurrency=concurrency or max(1, judge_cfg.concurrency // max(1, answers)),
                progress=progress, stream=stream)
        finally:
            await aclose_loop_clients()

    return asyncio.run(main())
