"""A log viewer (Line API) over the tail of a run's log file: follow/pause, search with highlights.

Only the last ``max_lines`` lines are kept; the file is read incrementally from a byte offset by
:class:`LogTail` (in a worker thread), so a multi-GB log never loads whole.
"""

from __future__ import annotations

import os
import re
from collections import deque
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from .safe import clean


@dataclass
class LogChunk:
    lines: list[str]
    reset: bool = False  # the file was truncated or replaced: drop what is shown
    missing: bool = False


class LogTail:
    """Incremental reader of a text file; ``read()`` returns the complete lines added since the last call.

    The first read starts ``initial_bytes`` before the end, so opening a huge log is instant.
    """

    def __init__(self, path: str | os.PathLike | None, initial_bytes: int = 256 * 1024) -> None:
        self.path = str(path) if path else None
        self.initial_bytes = initial_bytes
        self._offset: int | None = None
        self._inode: int | None = None
        self._partial = b""

    def read(self, max_bytes: int = 4 * 1024 * 1024) -> LogChunk:
        if not self.path:
            return LogChunk([], missing=True)
        try:
            st = os.stat(self.path)
        except OSError:
            return LogChunk([], missing=True)
        reset = False
        if self._offset is None or st.st_ino != self._inode or st.st_size < self._offset:
            reset = self._offset is not None
            self._inode = st.st_ino
            self._offset = max(0, st.st_size - self.initial_bytes)
            self._partial = b""
            skip_first = self._offset > 0
        else:
            skip_first = False
        if st.st_size == self._offset:
            return LogChunk([], reset=reset)
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(max_bytes)
        self._offset += len(data)
        data = self._partial + data
        parts = data.split(b"\n")
        self._partial = parts.pop()
        if skip_first and parts:
            parts = parts[1:]  # started mid-line
        from engine.runs.supervisor import is_progress_bar

        lines = [p.decode("utf-8", "replace") for p in parts]
        return LogChunk([ln for ln in lines if not is_progress_bar(ln)], reset=reset)


class LogView(ScrollView, can_focus=True):
    """Shows log lines literally (no markup), follows the end unless paused, highlights a search."""

    DEFAULT_CSS = """
    LogView { height: 1fr; background: $surface; }
    """

    follow: reactive[bool] = reactive(True)
    search: reactive[str] = reactive("")

    def __init__(self, max_lines: int = 20000, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._width = 0
        self._regex: re.Pattern[str] | None = None
        self.current_match: int | None = None  # index into the shown lines

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def clear(self) -> None:
        self._lines.clear()
        self._width = 0
        self.current_match = None
        self._update_size()

    def append(self, lines: list[str]) -> None:
        if not lines:
            return
        for line in lines:
            line = clean(line.expandtabs(4))
            self._lines.append(line)
            if len(line) > self._width:
                self._width = len(line)
        self._update_size()
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def _update_size(self) -> None:
        self.virtual_size = Size(self._width + 1, len(self._lines))
        self.refresh()

    def watch_follow(self, follow: bool) -> None:
        if follow:
            self.scroll_end(animate=False, x_axis=False)

    def watch_search(self, text: str) -> None:
        self._regex = re.compile(re.escape(text), re.IGNORECASE) if text else None
        self.current_match = None
        self.refresh()

    def matches(self) -> list[int]:
        if not self._regex:
            return []
        return [i for i, line in enumerate(self._lines) if self._regex.search(line)]

    def next_match(self, backwards: bool = False) -> int | None:
        """Move to the next (or previous) line matching the search; pauses following."""
        found = self.matches()
        if not found:
            self.current_match = None
            self.refresh()
            return None
        cur = self.current_match
        if cur is None:
            cur = int(self.scroll_offset.y) + (self.size.height if backwards else -1)
        if backwards:
            earlier = [i for i in found if i < cur]
            target = earlier[-1] if earlier else found[-1]
        else:
            later = [i for i in found if i > cur]
            target = later[0] if later else found[0]
        self.follow = False
        self.current_match = target
        self.scroll_to(y=max(0, target - self.size.height // 2), animate=False)
        self.refresh()
        return target

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = y + scroll_y
        width = self.size.width
        base = self.rich_style
        if index >= len(self._lines):
            return Strip([Segment(" " * width, base)], width)
        line = self._lines[index]
        line_style = base
        if index == self.current_match:
            line_style = base + Style(reverse=True)
        segments: list[Segment] = []
        if self._regex:
            pos = 0
            hit = base + Style(bgcolor="yellow", color="black", bold=True)
            for m in self._regex.finditer(line):
                if m.start() > pos:
                    segments.append(Segment(line[pos : m.start()], line_style))
                segments.append(Segment(m.group(0), hit))
                pos = m.end()
            segments.append(Segment(line[pos:], line_style))
        else:
            segments.append(Segment(line, line_style))
        strip = Strip(segments).crop_extend(scroll_x, scroll_x + width, base)
        return strip
