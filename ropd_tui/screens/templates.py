"""Template editor: edit the rubricator/verifier/scalar-judge template a run uses (or the files in
``prompts/``) with placeholders highlighted, validate and preview against a stored group, save
atomically (a running run reloads it live), browse the version history, diff any two versions, revert.

Keys: ctrl+s save · f5 validate + preview · tab/shift+tab roles (on the role bar) · in History:
enter/d diff (marked or editor vs selected) · m mark · r revert (load into the editor) · escape back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane, Tab, Tabs, TextArea
from textual.widgets.text_area import TextAreaTheme

from ..widgets.safe import clean, plain

ROLES = ("rubricator", "verifier", "scalar_judge")


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


class TemplateEditor(TextArea):
    """A TextArea that highlights ``{placeholders}``: known ones bold, unknown ones red."""

    THEME_NAME = "ropd-template"

    def __init__(self, *args: Any, role: str = "verifier", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.role = role
        base = TextAreaTheme.get_builtin_theme("css")
        styles = dict(base.syntax_styles) if base else {}
        styles["ropd.placeholder"] = Style(bold=True, color="cyan")
        styles["ropd.bad_placeholder"] = Style(bold=True, color="red", underline=True)
        self.register_theme(dataclasses.replace(base, name=self.THEME_NAME, syntax_styles=styles)
                            if base else TextAreaTheme(self.THEME_NAME, syntax_styles=styles))
        self.theme = self.THEME_NAME

    def _build_highlight_map(self) -> None:  # textual's hook (normally fed by tree-sitter)
        from engine.templates.editing import placeholder_spans

        self._line_cache.clear()
        highlights = self._highlights
        highlights.clear()
        for row, line in enumerate(self.document.lines):
            if "{" not in line:
                continue
            for start, end, known in placeholder_spans(line, self.role):
                # highlight columns are UTF-8 byte offsets
                highlights[row].append((_utf8_len(line[:start]), _utf8_len(line[:end]),
                                        "ropd.placeholder" if known else "ropd.bad_placeholder"))

    def set_role(self, role: str) -> None:
        self.role = role
        self._build_highlight_map()
        self.refresh()


class TemplatesScreen(Screen):
    AUTO_FOCUS = "#tpl-editor"  # typing right after opening goes into the template
    CHECK_DELAY_S = 0.3  # the Check pane follows the editor's text this long after the last keystroke
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("f5", "validate", "Validate+preview"),
        Binding("f2", "next_role", "Next role"),
        Binding("m", "mark", "Mark", show=False),
        Binding("d", "diff", "Diff", show=False),
        Binding("r", "revert", "Revert", show=False),
    ]
    DEFAULT_CSS = """
    TemplatesScreen #tpl-main { height: 1fr; }
    TemplatesScreen #tpl-editor { width: 3fr; }
    TemplatesScreen #tpl-side { width: 2fr; }
    TemplatesScreen #tpl-side-tabs { height: 1fr; }
    TemplatesScreen #tpl-history { height: 1fr; }
    TemplatesScreen .tpl-status { height: auto; max-height: 3; background: $panel; padding: 0 1; }
    """

    def __init__(self, store_path: str, run_id: int | None = None, role: str = "verifier") -> None:
        super().__init__()
        self.store_path = str(store_path)
        self.run_id = run_id
        self.role = role if role in ROLES else "verifier"
        self.run_name: str | None = None
        self.paths: dict[str, Path] = {}
        self.buffers: dict[str, str] = {}  # unsaved editor text per role (switching roles loses nothing)
        self.loaded_sha: dict[str, str | None] = {}  # sha of the file when it was opened / last saved
        self.history: list[dict[str, Any]] = []
        self.run_versions: dict[str, dict[str, Any]] = {}
        self.marked: str | None = None
        self.preview_group: dict[str, Any] | None = None
        self.last_validation: Any = None
        self.run_events: list[dict[str, Any]] = []  # the run's template_changed / template_rejected events
        self.loaded = False
        self._confirm_overwrite = False
        self._check_timer: Any = None

    # -- layout ------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield Tabs(*[Tab(r, id=f"role-{r}") for r in ROLES], id="tpl-roles", active=f"role-{self.role}")
        yield Static("", id="tpl-file", classes="tpl-status")
        with Horizontal(id="tpl-main"):
            yield TemplateEditor("", id="tpl-editor", role=self.role, show_line_numbers=True, soft_wrap=True)
            with Vertical(id="tpl-side"):
                with TabbedContent(id="tpl-side-tabs", initial="tpl-check"):
                    with TabPane("Check", id="tpl-check"):
                        with VerticalScroll():
                            yield Static("", id="tpl-problems")
                            yield Static("", id="tpl-preview")
                    with TabPane("History", id="tpl-hist"):
                        yield DataTable(id="tpl-history", cursor_type="row", zebra_stripes=True)
                    with TabPane("Diff", id="tpl-diff"):
                        with VerticalScroll():
                            yield Static("", id="tpl-diff-view")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "templates"
        table = self.query_one("#tpl-history", DataTable)
        table.add_columns("version", "first seen", "run step", "source", "")
        self.load_context()
        if self.run_id is not None and getattr(self.app, "live", True):
            self.set_interval(2.0, self._poll_events)  # a running run's accept/reject shows up here

    @work(thread=True, exclusive=True, group="tpl-events", exit_on_error=False)
    def _poll_events(self) -> None:
        from engine.store import RunStore

        after = self.run_events[-1]["seq"] if self.run_events else 0
        try:
            with RunStore(self.store_path, create=False) as store:
                new = store.events(self.run_id, after_seq=after, kinds=["template_changed", "template_rejected"])
        except Exception:  # noqa: BLE001 - the next poll tries again
            return
        if new:
            self.app.call_from_thread(self._new_events, new)

    def _new_events(self, events: list[dict[str, Any]]) -> None:
        self.run_events.extend(events)
        for e in events:
            if e["kind"] == "template_rejected":
                self.app.notify(clean(e.get("message") or ""), severity="error", timeout=10)
        self._refresh_status()

    # -- loading -------------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="tpl-load", exit_on_error=False)
    def load_context(self) -> None:
        """Read (on a thread) which files the run uses, the version history and a group for previews."""
        from engine.store import RunStore
        from engine.templates.editing import default_template_paths, run_template_paths

        try:
            store = RunStore(self.store_path, create=False)
        except Exception as err:  # noqa: BLE001 - no store: still edit the prompts/ files
            store, err_text = None, str(err)
        else:
            err_text = None
        paths = default_template_paths()
        run_name = None
        history: list[dict[str, Any]] = []
        run_versions: dict[str, dict[str, Any]] = {}
        events: list[dict[str, Any]] = []
        group = None
        try:
            if store is not None:
                if self.run_id is not None:
                    run = store.get_run(self.run_id)
                    run_name = run.name
                    paths = run_template_paths(run)
                    run_versions = {v["sha"]: v for v in store.templates(run.id)}
                    events = store.events(run.id, kinds=["template_changed", "template_rejected"])
                    steps = store.steps(run.id)
                    if steps:
                        last = steps[-1]["step"] if isinstance(steps[-1], dict) else steps[-1]
                        groups = store.step_groups(run.id, int(last), include_calls=False)
                        group = next((g for g in groups if g.get("rubric")), groups[0] if groups else None)
                history = store.templates()
        except Exception as err:  # noqa: BLE001
            err_text = str(err)
        finally:
            if store is not None:
                store.close()
        texts: dict[str, str] = {}
        for role, p in paths.items():
            try:
                texts[role] = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                texts[role] = ""
        self.app.call_from_thread(self._apply_context, run_name, paths, texts, history, run_versions, group, err_text,
                                  events)

    def _apply_context(self, run_name, paths, texts, history, run_versions, group, err_text, events=()) -> None:
        self.run_events = list(events)
        self.run_name = run_name
        self.paths = paths
        self.history = history
        self.run_versions = run_versions
        self.preview_group = group
        for role, text in texts.items():
            if role not in self.buffers:
                self.buffers[role] = text
                self.loaded_sha[role] = hashlib.sha256(text.encode("utf-8")).hexdigest() if text else None
        self.sub_title = f"{run_name} · templates" if run_name else "templates (prompts/)"
        self._show_role()
        self.loaded = True
        self.editor.focus()
        if err_text:
            self.app.notify(f"template history unavailable: {err_text}", severity="warning", timeout=8)

    # -- role switching --------------------------------------------------------------------------------
    @property
    def editor(self) -> TemplateEditor:
        return self.query_one("#tpl-editor", TemplateEditor)

    def _show_role(self) -> None:
        editor = self.editor
        editor.set_role(self.role)
        editor.load_text(self.buffers.get(self.role, ""))
        self._refresh_status()
        self._fill_history()
        self.action_validate()

    def switch_role(self, role: str) -> None:
        if role == self.role or role not in ROLES:
            return
        self.buffers[self.role] = self.editor.text
        self.role = role
        self.marked = None
        self.query_one("#tpl-roles", Tabs).active = f"role-{role}"
        if self.loaded:
            self._show_role()

    @on(Tabs.TabActivated, "#tpl-roles")
    def _role_tab(self, event: Tabs.TabActivated) -> None:
        if event.tab.id:
            self.switch_role(event.tab.id.removeprefix("role-"))

    def action_next_role(self) -> None:
        self.switch_role(ROLES[(ROLES.index(self.role) + 1) % len(ROLES)])

    @on(TextArea.Changed, "#tpl-editor")
    def _edited(self) -> None:
        if self.loaded:
            self.buffers[self.role] = self.editor.text
            self._confirm_overwrite = False
            self._refresh_status()
            # the Check pane always describes the text in the editor (an undo of a bad edit clears it)
            if self._check_timer is not None:
                self._check_timer.stop()
            self._check_timer = self.set_timer(self.CHECK_DELAY_S, self.action_validate)

    # -- status, validation, preview ----------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        text = self.buffers.get(self.role, "")
        return hashlib.sha256(text.encode("utf-8")).hexdigest() != self.loaded_sha.get(self.role)

    def _refresh_status(self) -> None:
        path = self.paths.get(self.role)
        text = self.buffers.get(self.role, "")
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        used = self.run_versions.get(sha)
        line = Text()
        line.append(f"{self.role}: ", style="bold")
        line.append_text(plain(str(path) if path else "(no file)"))
        line.append(f"  {sha[:12]}")
        line.append("  ● modified" if self.dirty else "  saved", style="yellow" if self.dirty else "green")
        if used:
            since = used.get("first_step")
            line.append(f"  (used by {self.run_name}" + (f" from step {since})" if since is not None else ")"),
                        style="dim")
        last = next((e for e in reversed(self.run_events) if (e.get("data") or {}).get("role") == self.role), None)
        if last is not None and last["kind"] == "template_rejected":
            line.append("\nthe running run rejected the last edit: ", style="bold red")
            line.append_text(plain(last.get("message") or "", limit=300))
        self.query_one("#tpl-file", Static).update(line)

    def action_validate(self) -> None:
        from engine.templates.editing import render_preview, validate_text

        text = self.editor.text
        v = validate_text(text, self.role, source=str(self.paths.get(self.role, "<editor>")))
        self.last_validation = v
        problems = self.query_one("#tpl-problems", Static)
        preview = self.query_one("#tpl-preview", Static)
        if not v.ok:
            msg = Text("✗ invalid: ", style="bold red")
            msg.append_text(plain(v.error))
            if v.missing:
                msg.append(f"\nmissing: {', '.join('{' + m + '}' for m in v.missing)}", style="red")
            if v.unknown:
                msg.append(f"\nunknown: {', '.join('{' + u + '}' for u in v.unknown)}", style="red")
            problems.update(msg)
            preview.update("")
            return
        src = "a stored group" if self.preview_group else "a sample group (no stored groups)"
        ok = Text(f"✓ valid {self.role} template {v.template.short_sha}; placeholders: "
                  f"{', '.join(sorted(v.template.placeholders))}\n", style="green")
        ok.append(f"Preview rendered against {src}:", style="bold")
        problems.update(ok)
        try:
            rendered = render_preview(v.template, self.preview_group)
        except Exception as err:  # noqa: BLE001 - a preview problem must never block editing
            rendered = f"(preview failed: {err})"
        preview.update(plain(rendered))

    # -- saving ----------------------------------------------------------------------------------------
    def action_save(self) -> None:
        from engine.templates.editing import save_atomically

        self.action_validate()
        v = self.last_validation
        path = self.paths.get(self.role)
        if path is None:
            self.app.notify("no file to save to", severity="error")
            return
        if not v.ok:
            self.app.notify(f"not saved: {clean(v.error)}", severity="error", timeout=10)
            return
        text = self.editor.text
        try:
            on_disk = path.read_text(encoding="utf-8") if path.exists() else ""
        except (OSError, UnicodeDecodeError):
            on_disk = ""
        disk_sha = hashlib.sha256(on_disk.encode("utf-8")).hexdigest() if on_disk else None
        if disk_sha != self.loaded_sha.get(self.role) and disk_sha != v.template.sha256 and not self._confirm_overwrite:
            self._confirm_overwrite = True
            self.app.notify(f"{path} changed on disk since it was opened; press ctrl+s again to overwrite it",
                            severity="warning", timeout=10)
            return
        self._confirm_overwrite = False
        try:
            save_atomically(path, text)
        except OSError as err:
            self.app.notify(f"not saved: {path}: {err}", severity="error", timeout=10)
            return
        self.loaded_sha[self.role] = v.template.sha256
        self._record_version(v.template, str(path))
        self._refresh_status()
        self.app.notify(f"saved {path.name} ({v.template.short_sha}); a running run picks it up from its next group")

    @work(thread=True, group="tpl-record", exit_on_error=False)
    def _record_version(self, template: Any, source: str) -> None:
        from engine.store import RunStore

        try:
            with RunStore(self.store_path, create=False) as store:
                store.record_template(template.role, template.sha256, template.text, source=source)
                history = store.templates()
        except Exception:  # noqa: BLE001 - the file is saved; the history shows it once a run uses it
            return
        self.app.call_from_thread(self._set_history, history)

    def _set_history(self, history: list[dict[str, Any]]) -> None:
        self.history = history
        self._fill_history()

    # -- history, diff, revert -------------------------------------------------------------------------
    def role_history(self) -> list[dict[str, Any]]:
        return sorted((h for h in self.history if h["role"] == self.role and h.get("text") is not None),
                      key=lambda h: h["first_seen"], reverse=True)

    def _fill_history(self) -> None:
        table = self.query_one("#tpl-history", DataTable)
        table.clear()
        current = hashlib.sha256(self.buffers.get(self.role, "").encode("utf-8")).hexdigest()
        for h in self.role_history():
            used = self.run_versions.get(h["sha"])
            flags = ("● editor " if h["sha"] == current else "") + ("★ marked" if h["sha"] == self.marked else "")
            table.add_row(h["sha"][:12], time.strftime("%Y-%m-%d %H:%M", time.localtime(h["first_seen"])),
                          "" if not used else str(used.get("first_step") if used.get("first_step") is not None else "-"),
                          plain(Path(h.get("source") or "").name or "", limit=30), flags, key=h["sha"])

    def _selected_version(self) -> dict[str, Any] | None:
        table = self.query_one("#tpl-history", DataTable)
        rows = self.role_history()
        if not rows or table.cursor_row is None or table.cursor_row >= len(rows):
            return None
        return rows[table.cursor_row]

    def action_mark(self) -> None:
        sel = self._selected_version()
        if sel:
            self.marked = sel["sha"]
            self._fill_history()

    def action_diff(self) -> None:
        from engine.templates.editing import unified_diff

        sel = self._selected_version()
        if sel is None:
            self.app.notify("no stored version selected (History tab)", severity="warning")
            return
        marked = next((h for h in self.role_history() if h["sha"] == self.marked), None)
        if marked is not None and marked["sha"] != sel["sha"]:
            a_label, a_text = f"{marked['sha'][:12]}", marked["text"]
        else:
            a_label, a_text = f"{sel['sha'][:12]}", sel["text"]
            sel = {"sha": "editor", "text": self.editor.text}
        b_label = "editor" if sel["sha"] == "editor" else sel["sha"][:12]
        self.show_diff(unified_diff(a_label, a_text, b_label, sel["text"]))

    def show_diff(self, lines: list[str]) -> None:
        out = Text()
        for line in lines or ["(no differences)"]:
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else (
                "cyan" if line.startswith("@@") else "")
            out.append_text(plain(line, style))
            out.append("\n")
        self.query_one("#tpl-diff-view", Static).update(out)
        self.query_one("#tpl-side-tabs", TabbedContent).active = "tpl-diff"

    @on(DataTable.RowSelected, "#tpl-history")
    def _history_enter(self) -> None:
        self.action_diff()

    def action_revert(self) -> None:
        sel = self._selected_version()
        if sel is None:
            self.app.notify("no stored version selected (History tab)", severity="warning")
            return
        self.editor.load_text(sel["text"])
        self.buffers[self.role] = sel["text"]
        self._refresh_status()
        self.action_validate()
        self.app.notify(f"reverted the editor to {sel['sha'][:12]}; ctrl+s saves it")

    def action_back(self) -> None:
        if any(self._role_dirty(r) for r in ROLES):
            if not getattr(self, "_warned_dirty", False):
                self._warned_dirty = True
                self.app.notify("unsaved changes; press escape again to leave without saving", severity="warning")
                return
        self.app.pop_screen()

    def _role_dirty(self, role: str) -> bool:
        if role == self.role and self.loaded:
            self.buffers[role] = self.editor.text
        text = self.buffers.get(role)
        if text is None:
            return False
        return hashlib.sha256(text.encode("utf-8")).hexdigest() != self.loaded_sha.get(role) and bool(text)
