"""Teacher answers users already have (an SFT set, an earlier API run, verl's generation output) into a
teacher index: ``ropd-tui --headless index import --from FILE --out INDEX``.

The file (JSONL, Parquet or CSV, read by :func:`engine.tasks.files.read_rows`) has a prompt and one
or more responses per row; rows are grouped by the canonical prompt hash (:func:`engine.types.prompt_hash`,
the index key), so three rows with the same prompt give that prompt three answers.

- prompt (``--prompt-key``; default ``prompt``, else ``messages``): a string or chat messages;
- responses (``--response-key``; default the first of ``response``, ``responses``, ``completion``): a
  string, a list of strings (several answers in one row, as verl's generation writes them) or chat
  messages (their assistant turns, TRL's conversational completions). Without a response column, chat
  messages that end with an assistant turn (an SFT conversation) are split: the conversation before the
  last assistant turn is the prompt, that turn the answer.

Like ``index build``: reasoning up to ``</think>`` is stripped, every prompt's row is appended and fsynced
on its own (an interrupted import is simply run again), an existing index is topped up (answers it already
has are skipped, so a second run adds nothing), each row records its settings (``source: import``, the
file, the teacher model if given), and a summary reports what was done and the prompts that have fewer
than K answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, TeacherIndexError
from engine.tasks import strip_reasoning
from engine.tasks.files import MISSING, get_field, missing_column_error, normalise_prompt, read_rows
from engine.teacher.index import IndexWriter, Progress, TeacherIndex, make_row, shorten
from engine.types import Prompt, prompt_hash, prompt_text

PROMPT_KEYS = ("prompt", "messages")
RESPONSE_KEYS = ("response", "responses", "completion")


@dataclass
class ImportSummary:
    out: str
    source: str
    rows: int  # rows read from the file
    prompts: int  # distinct prompts in the file
    written: int  # index rows appended (new prompts and topped-up ones)
    unchanged: int  # prompts whose answers were all in the index already
    answers_added: int
    duplicates: int  # responses the index (or the file, for the same prompt) already had
    empty: int  # rows without a response, or with an empty one
    k: int
    short: list[tuple[str, int]] = field(default_factory=list)  # (prompt, answers) with fewer than k
    elapsed_s: float = 0.0
    repaired: bool = False

    def lines(self) -> list[str]:
        out = [f"teacher index: {self.out} (imported from {self.source})",
               f"  rows read: {self.rows}; prompts: {self.prompts} distinct, {self.written} written, "
               f"{self.unchanged} already complete",
               f"  answers added: {self.answers_added} ({self.duplicates} already present, {self.empty} empty "
               f"responses skipped) in {self.elapsed_s:.1f}s"]
        if self.repaired:
            out.append("  an incomplete last line from an interrupted run was removed")
        out += short_answer_lines(self.short, self.k, of=self.prompts)
        return out


def short_answer_lines(short: list[tuple[str, int]], k: int, *, of: int) -> list[str]:
    """'N of M prompts have fewer than K answers' and the first few of them."""
    if not short:
        return [f"  every prompt has at least k={k} answers"]
    out = [f"  {len(short)} of {of} prompts have fewer than k={k} answers (the scorer uses what there is, with "
           "a warning)"]
    for prompt, n in short[:5]:
        out.append(f"    {n} answer{'s' if n != 1 else ''}: {prompt!r}")
    if len(short) > 5:
        out.append(f"    ... and {len(short) - 5} more")
    return out


def short_prompts(index: TeacherIndex, k: int, keys: list[str] | None = None) -> list[tuple[str, int]]:
    rows = [index.rows[key] for key in (keys if keys is not None else list(index.rows)) if key in index.rows]
    return [(shorten(prompt_text(r["prompt"]), 70), len(r["answers"])) for r in rows if len(r["answers"]) < k]


# ---------------------------------------------------------------------------------------------
# reading teacher outputs

def _pick(rows: list[dict[str, Any]], given: str | None, defaults: tuple[str, ...]) -> str | None:
    if given:
        return given
    return next((k for k in defaults if any(get_field(r, k) is not MISSING for r in rows)), None)


def _responses(value: Any) -> list[str | None]:
    """The answers one cell holds (None for an empty cell)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if value is None or value is MISSING:
        return [None]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict) and "content" in value:
        return [value.get("content")]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(m, dict) for m in value):  # chat messages: the assistant turns
            turns = [m.get("content") for m in value if m.get("role", "assistant") == "assistant"]
            return [t if isinstance(t, str) else None for t in turns] or [None]
        return [v if isinstance(v, str) else (None if v is None else str(v)) for v in value] or [None]
    return [str(value)]


def read_teacher_outputs(path: str | Path, *, prompt_key: str | None = None, response_key: str | None = None
                         ) -> tuple[dict[str, tuple[Prompt, list[str | None]]], int]:
    """``({key: (prompt, [responses])}, rows read)`` in file order; responses are None where empty."""
    located = read_rows(path, what="--from")
    rows = [r for _, r in located]
    pkey = _pick(rows, prompt_key, PROMPT_KEYS)
    if pkey is None or not any(get_field(r, pkey) is not MISSING for r in rows):
        raise missing_column_error(str(path), rows, prompt_key or "prompt", "--prompt-key", "--from")
    rkey = _pick(rows, response_key, RESPONSE_KEYS)
    if response_key and not any(get_field(r, response_key) is not MISSING for r in rows):
        raise missing_column_error(str(path), rows, response_key, "--response-key", "--from")
    grouped: dict[str, tuple[Prompt, list[str | None]]] = {}
    for where, row in located:
        raw = get_field(row, pkey)
        prompt = normalise_prompt(raw)
        if prompt is None:
            raise ConfigError(f"{where}: the prompt ({pkey!r}) must be a non-empty string or a list of chat messages",
                              hint="fix the row, or pass --prompt-key with the prompt column")
        if rkey is not None:
            answers = _responses(get_field(row, rkey))
        elif isinstance(prompt, list) and prompt[-1].get("role") == "assistant" and len(prompt) > 1:
            answers = _responses(prompt[-1].get("content"))  # an SFT conversation: prompt, then the answer
            prompt = prompt[:-1]
        else:
            columns = ", ".join(sorted({str(k) for r in rows for k in r}))
            raise ConfigError(f"--from {path}: no response column (looked for {', '.join(RESPONSE_KEYS)}); its "
                              f"columns: {columns}",
                              hint="pass --response-key with the column that holds the teacher's answers")
        key = prompt_hash(prompt)
        grouped.setdefault(key, (prompt, []))[1].extend(answers)
    return grouped, len(rows)


# ---------------------------------------------------------------------------------------------
# importing

def import_index(source: str | Path, out: str | Path, *, prompt_key: str | None = None,
                 response_key: str | None = None, teacher_model: str | None = None, k: int = 4,
                 progress: bool = True, stream=None) -> ImportSummary:
    """Build or top up the index ``out`` from the teacher outputs in ``source`` (see the module doc)."""
    if k < 1:
        raise TeacherIndexError(f"--k must be >= 1, got {k}")
    t0 = time.monotonic()
    source, out = Path(source), Path(out)
    grouped, n_rows = read_teacher_outputs(source, prompt_key=prompt_key, response_key=response_key)
    settings = {"source": "import", "file": source.name, "model": teacher_model}
    writer = IndexWriter(out)  # repairs a partial tail first, then we read the clean file
    try:
        existing = TeacherIndex.load(out)
        summary = ImportSummary(out=str(out), source=str(source), rows=n_rows, prompts=len(grouped), written=0,
                                unchanged=0, answers_added=0, duplicates=0, empty=0, k=k, repaired=writer.repaired)
        bar = Progress(len(grouped), stream=stream) if progress and len(grouped) > 50 else None
        final: dict[str, list[str]] = {}
        for key, (prompt, responses) in grouped.items():
            row = existing.row_for(prompt)  # also under the other spelling (string <-> one user message)
            if row is not None:
                prompt = row["prompt"]  # top up that row, so lookups by its spelling see the new answers
            have = list(row["answers"]) if row is not None else []
            answers = list(have)
            for text in responses:
                text = strip_reasoning(text).strip() if text is not None else ""
                if not text:
                    summary.empty += 1
                elif text in answers:
                    summary.duplicates += 1
                else:
                    answers.append(text)
            if len(answers) > len(have):
                row_settings = settings if row is None else {**(row.get("settings") or {}),
                                                             "imported_from": source.name}
                writer.write(make_row(prompt, answers, row_settings))
                summary.written += 1
                summary.answers_added += len(answers) - len(have)
            else:
                summary.unchanged += 1
            final[key] = answers
            if bar:
                bar.update(True)
    finally:
        writer.close()
    summary.short = [(shorten(prompt_text(grouped[key][0]), 70), len(a)) for key, a in final.items() if len(a) < k]
    summary.short.sort(key=lambda item: item[1])
    summary.elapsed_s = time.monotonic() - t0
    return summary
