"""Editing templates safely: which file a run uses, validation with a location, a preview rendered
against a stored group, atomic saves, version history and diffs. No UI here (the TUI editor and the
headless ``templates`` command use it)."""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import TemplateError
from engine.templates.render import ALLOWED_PLACEHOLDERS, REQUIRED_PLACEHOLDERS, ROLES, Template, resolve_template_path
from engine.types import Criterion, Rubric

PLACEHOLDER_RE = re.compile(r"(?<!\{)\{([^{}]*)\}(?!\})")


@dataclass
class Validation:
    ok: bool
    template: Template | None
    error: str | None = None
    line: int | None = None
    placeholder: str | None = None
    missing: list[str] | None = None
    unknown: list[str] | None = None


def validate_text(text: str, role: str, source: str = "<editor>") -> Validation:
    """Validate editor text as a ``role`` template; on failure say what and where."""
    found = [m.group(1).strip() for m in PLACEHOLDER_RE.finditer(text.replace("{{", "\0\0").replace("}}", "\0\0"))]
    unknown = sorted({n for n in found if n not in ALLOWED_PLACEHOLDERS[role]})
    missing = sorted(REQUIRED_PLACEHOLDERS[role] - set(found))
    try:
        tpl = Template.from_text(text, role, source=source)
    except TemplateError as err:
        from engine.templates.watched import _error_location

        line, placeholder = _error_location(err)
        return Validation(False, None, str(err), line, placeholder, missing, unknown)
    return Validation(True, tpl, missing=[], unknown=[])


def placeholder_spans(line: str, role: str) -> list[tuple[int, int, bool]]:
    """(start, end, known) character spans of ``{name}`` placeholders in one line (``{{`` is literal)."""
    masked = line.replace("{{", "\0\0").replace("}}", "\0\0")
    allowed = ALLOWED_PLACEHOLDERS.get(role, set())
    return [(m.start(), m.end(), m.group(1).strip() in allowed) for m in PLACEHOLDER_RE.finditer(masked)]


def run_template_paths(run: Any) -> dict[str, Path]:
    """The template files a run is configured with (relative paths against the run's directory of
    launch), falling back to the shipped ``prompts/`` files."""
    cfg = (getattr(run, "config", None) if not isinstance(run, dict) else run.get("config")) or {}
    cwd = getattr(run, "cwd", None) if not isinstance(run, dict) else run.get("cwd")
    section = cfg.get("templates") or {}
    out: dict[str, Path] = {}
    for role in ROLES:
        value = section.get(role) or f"prompts/{role}.txt"
        p = Path(value).expanduser()
        if not p.is_absolute() and cwd and (Path(cwd) / p).exists():
            p = Path(cwd) / p
        out[role] = resolve_template_path(p)
    return out


def default_template_paths() -> dict[str, Path]:
    return {role: resolve_template_path(f"prompts/{role}.txt") for role in ROLES}


def save_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path`` and rename it over ``path`` (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def preview_values(group: dict[str, Any] | None, role: str) -> dict[str, Any]:
    """Placeholder values from a stored group (``RunStore.step_groups`` shape), or a small sample."""
    if not group:
        group = {"question": "What is 2 + 3?",
                 "answers": [{"kind": "teacher", "index": 0, "text": "2 + 3 = 5. The answer is 5.", "pool_position": 1},
                             {"kind": "student", "index": 0, "text": "The answer is 6.", "pool_position": 2}],
                 "rubric": {"criteria": [{"key": "c1", "text": "The answer gives 5 as the final result.",
                                          "points": 5, "category": "task fulfilment"}]}}
    answers = group.get("answers") or []
    teachers = [a["text"] for a in sorted((a for a in answers if a["kind"] == "teacher"), key=lambda a: a["index"])]
    students = [a["text"] for a in sorted((a for a in answers if a["kind"] == "student"), key=lambda a: a["index"])]
    pooled = sorted((a for a in answers if a.get("pool_position") is not None), key=lambda a: a["pool_position"])
    pool = [a["text"] for a in pooled] or students + teachers
    question = group.get("question") or ""
    if role == "rubricator":
        from engine.config import ScorerConfig

        bounds = ScorerConfig()
        return {"question": question, "teacher_response": teachers, "student_response": students,
                "extra_rubric_instructions": "", "min_criteria": bounds.min_criteria,
                "max_criteria": bounds.max_criteria}
    if role == "verifier":
        crits = ((group.get("rubric") or {}).get("criteria")) or []
        rubric = Rubric([Criterion(c.get("key") or c.get("id") or f"c{i + 1}", c["text"], int(c["points"]),
                                   c.get("category") or "") for i, c in enumerate(crits)])
        return {"question": question, "rubrics": rubric, "answers": pool, "extra_scoring_instructions": "",
                "n_answers": len(pool), "n_criteria": len(rubric.criteria)}
    return {"question": question, "answers": pool, "extra_scoring_instructions": "", "n_answers": len(pool)}


def render_preview(template: Template, group: dict[str, Any] | None) -> str:
    return template.render(**preview_values(group, template.role))


def unified_diff(a_label: str, a_text: str, b_label: str, b_text: str) -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        a_text.splitlines(keepends=True), b_text.splitlines(keepends=True), a_label, b_label)]
