"""Teacher answers and student rollouts side by side, each with its reward (texts shown literally)."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Static

from .safe import plain
from .verdicts import AnswerView, fmt_reward


def answer_header(a: AnswerView, n_criteria: int) -> Text:
    passed = sum(1 for v in a.verdicts if v is True)
    head = Text(end="")
    head.append(f"{a.label} ", style="bold")
    head.append(f"reward {fmt_reward(a.reward)}", style="cyan")
    head.append(f"  {passed}/{n_criteria} criteria")
    if a.correct is not None:
        head.append("  correct" if a.correct else "  wrong", style="green" if a.correct else "red")
    if a.clipped:
        head.append("  hit token limit", style="yellow")
    if a.truncated:
        head.append("  cut for judge", style="yellow")
    return head


class AnswerCard(Static):
    """One answer: a header line and the text, literally."""

    DEFAULT_CSS = """
    AnswerCard { height: auto; padding: 0 1; margin-bottom: 1; border-left: wide $panel; }
    AnswerCard.-selected { border-left: wide $accent; background: $boost; }
    """

    def __init__(self, answer: AnswerView, n_criteria: int) -> None:
        text = answer_header(answer, n_criteria)
        text.append("\n")
        text.append_text(plain(answer.text))
        super().__init__(text, id=f"card-{answer.kind}-{answer.index}", markup=False)
        self.answer = answer


class AnswerPanes(Horizontal):
    """Two columns: teacher answers on the left, student rollouts on the right (the screen scrolls)."""

    DEFAULT_CSS = """
    AnswerPanes { height: auto; }
    AnswerPanes > Vertical { width: 1fr; height: auto; }
    AnswerPanes .pane-title { text-style: bold; background: $panel; width: 1fr; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Vertical(id="teacher-pane"):
            yield Static("Teacher answers", classes="pane-title")
        with Vertical(id="student-pane"):
            yield Static("Student rollouts", classes="pane-title")

    async def show(self, answers: list[AnswerView], n_criteria: int) -> None:
        for pane_id, kind in (("teacher-pane", "teacher"), ("student-pane", "student")):
            pane = self.query_one(f"#{pane_id}", Vertical)
            await pane.query(AnswerCard).remove()
            cards = [AnswerCard(a, n_criteria) for a in answers if a.kind == kind]
            if cards:
                await pane.mount_all(cards)

    selected_key: str | None = None

    def select(self, key: str, *, scroll: bool = True) -> None:
        self.selected_key = key
        for card in self.query(AnswerCard):
            selected = card.answer.key == key
            card.set_class(selected, "-selected")
            if selected and scroll:
                card.scroll_visible(animate=False)
