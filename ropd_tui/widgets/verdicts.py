"""The verdict matrix: answers (rows) x criteria (columns), pass/fail at a glance, with rewards."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text
from textual.widgets import DataTable

from .safe import plain

PASS = Text("✓", style="bold green", end="")
FAIL = Text("✗", style="bold red", end="")
UNKNOWN = Text("·", style="dim", end="")


@dataclass
class CriterionView:
    id: str
    text: str
    points: int
    category: str = ""


@dataclass
class AnswerView:
    kind: str  # "student" | "teacher"
    index: int
    text: str
    reward: float | None = None
    correct: bool | None = None
    truncated: bool = False  # the judge saw it cut to scorer.answer_char_budget characters
    clipped: bool | None = None  # generation hit max_new_tokens (None: not known)
    verdicts: list[bool | None] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{'S' if self.kind == 'student' else 'T'}{self.index + 1}"

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.index}"

    def failed(self, criterion: int) -> bool:
        return criterion < len(self.verdicts) and self.verdicts[criterion] is False


def fmt_reward(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def verdict_cell(value: bool | None) -> Text:
    return PASS if value is True else FAIL if value is False else UNKNOWN


def correct_cell(value: bool | None) -> Text:
    if value is None:
        return Text("", end="")
    return Text("yes", style="green", end="") if value else Text("no", style="red", end="")


class VerdictMatrix(DataTable):
    """A DataTable of answers x criteria. Every cell is a ``Text`` (never markup)."""

    DEFAULT_CSS = """
    VerdictMatrix { height: auto; max-height: 16; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)

    def show(self, criteria: list[CriterionView], answers: list[AnswerView]) -> None:
        keep = self.cursor_row
        self.clear(columns=True)
        self.add_column("answer", key="answer")
        self.add_column("reward", key="reward")
        self.add_column("correct", key="correct")
        for i, c in enumerate(criteria):
            self.add_column(plain(f"{c.id or 'c' + str(i + 1)}·{c.points}"), key=f"c{i}")
        for a in answers:
            style = "bold" if a.kind == "teacher" else ""
            cells = [plain(a.label, style), plain(fmt_reward(a.reward)), correct_cell(a.correct)]
            cells += [verdict_cell(a.verdicts[i] if i < len(a.verdicts) else None) for i in range(len(criteria))]
            self.add_row(*cells, key=a.key)
        if answers:
            self.move_cursor(row=min(keep, len(answers) - 1))
