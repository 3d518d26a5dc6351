"""Errors that carry a message meant for the user.

Every error a user can cause (bad config, broken template, dead judge server, missing teacher
answer) is raised as a subclass of :class:`UserError`. Front ends print ``str(err)`` and exit with
``err.exit_code``; they never show a traceback for these.
"""

from __future__ import annotations


def one_line(text: object, limit: int = 80) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), cut to ``limit``
    characters with "..." when longer: for causes in summaries, where a first line alone can lose the
    reason (a server's "1 validation error:\n  ...")."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: max(0, limit - 3)] + "..."


class UserError(Exception):
    """An error with a message that names the thing and says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class ConfigError(UserError):
    """A config file or override is invalid (unknown key, bad value, missing file)."""


class TemplateError(UserError):
    """A prompt template is invalid (missing/unknown placeholder, unreadable file)."""


class JudgeError(UserError):
    """A judge endpoint failed in a way that retries cannot fix (dead server, auth, bad model)."""

    exit_code = 3


class TeacherIndexError(UserError):
    """The teacher index is missing, unreadable, or has no entry for a prompt."""


class ScoringFailureRateError(UserError):
    """Too many groups of a batch failed; training must stop."""

    exit_code = 4


class JudgeUnreachableError(ScoringFailureRateError):
    """Too many groups failed because the judge stopped answering mid-run (its circuit breaker opened):
    exit code 3, as for any unreachable judge; still a ScoringFailureRateError, so a training step that
    ends this way is recorded as aborted like any other."""

    exit_code = 3


class StoreError(UserError):
    """The run store is missing, from a newer schema, or a run does not exist."""


class DependencyError(UserError):
    """An installed package is missing or does not provide what the code relies on (unsupported version)."""


class SearchQueryError(UserError):
    """A full-text search query is empty, too long, not valid FTS5 syntax, or too broad to finish."""
