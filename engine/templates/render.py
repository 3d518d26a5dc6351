"""Judge prompt templates: validated at load, rendered safely, identified by the sha256 of their text.

Syntax is the subset of ``str.format`` the reference templates use, so a user can bring them as they
are: ``{name}`` is a placeholder, ``{{`` and ``}}`` are literal braces. Everything else that
``str.format`` would interpret (``{name.attr}``, ``{name[0]}``, ``{name!r}``, ``{name:>10}``, ``{}``)
is rejected at load with the file, line and placeholder; nothing in a template is ever evaluated.

Rendering is a single pass over the parsed template: values are inserted as text and never
formatted again, so braces (or ``{question.__class__}``) inside a question or an answer stay literal.

Roles and their placeholders (the ``extra_*`` and count ones are optional, everything else is required):

* rubricator: ``{question}`` ``{teacher_response}`` ``{student_response}`` ``{extra_rubric_instructions}``
  ``{min_criteria}`` ``{max_criteria}`` (the configured criteria count bounds)
* verifier: ``{question}`` ``{rubrics}`` ``{answers}`` ``{extra_scoring_instructions}`` ``{n_answers}``
  ``{n_criteria}`` (this request's answers and criteria)
* scalar_judge: ``{question}`` ``{answers}`` ``{extra_scoring_instructions}`` ``{n_answers}``

List values are rendered as numbered blocks with untrusted text neutralised (see
:mod:`engine.judging.parsing`): ``teacher_response`` -> ``<teacher_answer id="N">``, ``student_response`` ->
``<student_answer id="N">``, ``answers`` -> ``<answer id="N">``. A :class:`~engine.types.Rubric`
given as ``rubrics`` is rendered with :func:`engine.judging.parsing.format_rubric`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from engine.errors import TemplateError
from engine.judging.parsing import format_answers, format_blocks, format_rubric
from engine.types import Rubric

ROLES = ("rubricator", "verifier", "scalar_judge")

REQUIRED_PLACEHOLDERS: dict[str, set[str]] = {
    "rubricator": {"question", "teacher_response", "student_response"},
    "verifier": {"question", "rubrics", "answers"},
    "scalar_judge": {"question", "answers"},
}
OPTIONAL_PLACEHOLDERS: dict[str, set[str]] = {
    "rubricator": {"extra_rubric_instructions", "min_criteria", "max_criteria"},
    "verifier": {"extra_scoring_instructions", "n_answers", "n_criteria"},
    "scalar_judge": {"extra_scoring_instructions", "n_answers"},
}
ALLOWED_PLACEHOLDERS: dict[str, set[str]] = {
    r: REQUIRED_PLACEHOLDERS[r] | OPTIONAL_PLACEHOLDERS[r] for r in ROLES
}

#: How list values of each placeholder are rendered (block tag).
_LIST_TAGS = {"teacher_response": "teacher_answer", "student_response": "student_answer", "answers": "answer"}

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# A parsed template: literal strings and placeholder names (Placeholder instances).
@dataclass(frozen=True)
class _Placeholder:
    name: str
    line: int


Segment = Union[str, _Placeholder]

#: The shipped templates, next to the ``engine`` package.
PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


def default_template_path(role: str) -> Path:
    """The shipped template of a role (``prompts/<role>.txt`` in the project)."""
    _check_role(role)
    return PROMPTS_DIR / f"{role}.txt"


def resolve_template_path(path: str | Path) -> Path:
    """A configured template path: as given when it exists, else relative to the project root.

    Lets the default ``prompts/verifier.txt`` work from any working directory.
    """
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = PROMPTS_DIR.parent / p
    return alt if alt.exists() else p


def _check_role(role: str) -> None:
    if role not in REQUIRED_PLACEHOLDERS:
        raise TemplateError(f"unknown template role {role!r}; expected one of {', '.join(ROLES)}")


def _snippet(field: str) -> str:
    field = field.replace("\n", "\\n")
    return field if len(field) <= 40 else field[:37] + "..."


def parse_template(text: str, role: str, source: str) -> list[Segment]:
    """Split a template into literal text and placeholders, rejecting anything unsafe or unknown."""
    allowed = ALLOWED_PLACEHOLDERS[role]
    segments: list[Segment] = []
    buf: list[str] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "{":
            if text.startswith("{{", i):
                buf.append("{")
                i += 2
                continue
            close = text.find("}", i + 1)
            if close < 0:
                raise TemplateError(
                    f"{source}, line {line}: unclosed '{{' (placeholder never closed)",
                    hint="write a literal brace as '{{', or close the placeholder, e.g. {question}")
            field = text[i + 1:close]
            if "{" in field:
                raise TemplateError(
                    f"{source}, line {line}: '{{' inside a placeholder near '{{{_snippet(field)}'",
                    hint="write literal braces as '{{' and '}}' (for example in JSON examples)")
            name = field.strip()
            if not _NAME_RE.match(name):
                if re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*[.\[!:]", name):
                    raise TemplateError(
                        f"{source}, line {line}: placeholder '{{{_snippet(field)}}}' uses attribute, index, "
                        "conversion or format-spec syntax, which templates do not allow",
                        hint=f"use a plain name; allowed for {role}: {', '.join(sorted(allowed))}")
                raise TemplateError(
                    f"{source}, line {line}: '{{{_snippet(field)}}}' is not a placeholder",
                    hint="write literal braces as '{{' and '}}' (for example in JSON examples); "
                    f"placeholders for {role}: {', '.join(sorted(allowed))}")
            if name not in allowed:
                raise TemplateError(
                    f"{source}, line {line}: unknown placeholder '{{{name}}}' for the {role} template",
                    hint=f"allowed placeholders: {', '.join(sorted(allowed))}; write literal braces as '{{{{' and '}}}}'")
            if buf:
                segments.append("".join(buf))
                buf = []
            segments.append(_Placeholder(name, line))
            line += field.count("\n")
            i = close + 1
            continue
        if ch == "}":
            if text.startswith("}}", i):
                buf.append("}")
                i += 2
                continue
            raise TemplateError(f"{source}, line {line}: single '}}' outside a placeholder",
                                hint="write a literal closing brace as '}}'")
        if ch == "\n":
            line += 1
        buf.append(ch)
        i += 1
    if buf:
        segments.append("".join(buf))
    present = {s.name for s in segments if isinstance(s, _Placeholder)}
    missing = sorted(REQUIRED_PLACEHOLDERS[role] - present)
    if missing:
        last_line = text.count("\n") + 1
        raise TemplateError(
            f"{source}, line {last_line} (end of file): the {role} template is missing the required "
            f"placeholder(s) {', '.join('{' + m + '}' for m in missing)}",
            hint=f"a {role} template must contain {', '.join('{' + m + '}' for m in sorted(REQUIRED_PLACEHOLDERS[role]))}")
    return segments


def render_value(name: str, value: Any) -> str:
    """A value as it is inserted for a placeholder (lists become numbered, neutralised blocks)."""
    if value is None:
        return ""
    if isinstance(value, Rubric):
        return format_rubric(value)
    if isinstance(value, (list, tuple)):
        if name == "answers":
            return format_answers([str(v) for v in value])
        tag = _LIST_TAGS.get(name)
        if tag is None:
            raise TypeError(f"placeholder {{{name}}} takes a string, not a list")
        return format_blocks([str(v) for v in value], tag)
    return str(value)


class Template:
    """A validated judge prompt template for one role."""

    def __init__(self, text: str, role: str, *, source: str = "<template>"):
        _check_role(role)
        self.text = text
        self.role = role
        self.source = source
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self._segments = parse_template(text, role, source)

    @classmethod
    def from_text(cls, text: str, role: str, *, source: str = "<template>") -> "Template":
        return cls(text, role, source=source)

    @classmethod
    def load(cls, path: str | Path, role: str) -> "Template":
        """Read and validate a template file (TemplateError naming the file on any problem)."""
        _check_role(role)
        p = resolve_template_path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TemplateError(f"{role} template not found: {p}",
                                hint=f"set templates.{role} to an existing file (the shipped one is "
                                f"{default_template_path(role)})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TemplateError(f"{role} template {p} cannot be read: {e}",
                                hint="the file must be readable UTF-8 text") from None
        return cls(text, role, source=str(p))

    @classmethod
    def default(cls, role: str) -> "Template":
        return cls.load(default_template_path(role), role)

    @property
    def placeholders(self) -> set[str]:
        """The placeholders this template uses."""
        return {s.name for s in self._segments if isinstance(s, _Placeholder)}

    @property
    def literal_text(self) -> str:
        """The template's own text without its placeholders (literal braces as single braces)."""
        return "\n".join(s for s in self._segments if isinstance(s, str))

    @property
    def short_sha(self) -> str:
        return self.sha256[:12]

    def render(self, **values: Any) -> str:
        """Fill the placeholders with ``values`` in one pass (values are never formatted again).

        Every required placeholder of the role needs a value; optional ones default to "". Names that
        are not placeholders of the role raise TypeError (a programming error, not user input).
        """
        allowed = ALLOWED_PLACEHOLDERS[self.role]
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise TypeError(f"{self.role} template has no placeholder(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        missing = sorted(REQUIRED_PLACEHOLDERS[self.role] - set(values))
        if missing:
            raise TypeError(f"rendering the {self.role} template needs value(s) for {', '.join(missing)}")
        rendered = {name: render_value(name, v) for name, v in values.items()}
        return "".join(s if isinstance(s, str) else rendered.get(s.name, "") for s in self._segments)

    def __repr__(self) -> str:
        return f"Template(role={self.role!r}, source={self.source!r}, sha256={self.short_sha})"
