"""Versioned, watched prompt templates: what the scorer asks for with ``.current(role)``.

A :class:`TemplateSet` holds one :class:`engine.templates.render.Template` per role (rubricator, verifier,
scalar_judge). With :meth:`TemplateSet.start` a background thread watches the template files
(watchfiles). When a file changes:

- a valid new version becomes current at once, so the scorer uses it from the next group on; it is
  recorded in the run store (``record_template``) and as a ``template_changed`` event of the run, so
  the run's curves can mark the step where it happened;
- an invalid version (unreadable, missing or unknown placeholder) is rejected: the previous version
  stays in use, and a ``template_rejected`` event names the file, the line and the placeholder.

Both are also written to the run log (logger ``ropd.templates``; stderr when logging is not set up).
Every :class:`engine.types.GroupResult` carries the template versions it was judged with: the scorer
reads them from :meth:`TemplateSet.versions` / ``current(role).sha256``.

Templates given as :class:`Template` objects (e.g. a stored version picked for a replay) are fixed:
they are never watched.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from engine.errors import TemplateError
from engine.templates.render import Template, resolve_template_path

log = logging.getLogger("ropd.templates")

ROLES = ("rubricator", "verifier", "scalar_judge")


@dataclass
class TemplateChange:
    """One outcome of reloading a template file (what listeners and events receive)."""

    role: str
    path: str
    accepted: bool
    sha256: str | None = None  # the new version (accepted) or the rejected text's sha
    previous_sha256: str | None = None
    error: str | None = None
    line: int | None = None
    placeholder: str | None = None
    step: int | None = None

    def as_event_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"role": self.role, "file": self.path}
        if self.accepted:
            data.update(sha256=self.sha256, previous_sha256=self.previous_sha256)
        else:
            data.update(error=self.error, line=self.line, placeholder=self.placeholder,
                        kept_sha256=self.previous_sha256, rejected_sha256=self.sha256)
        return data

    @property
    def message(self) -> str:
        if self.accepted:
            prev = (self.previous_sha256 or "?")[:12]
            return f"{self.role} template changed: {self.path} {prev} -> {(self.sha256 or '?')[:12]}"
        kept = (self.previous_sha256 or "?")[:12]
        return f"{self.role} template rejected: {self.error}; the previous version {kept} stays in use"


@dataclass
class _Slot:
    role: str
    template: Template
    path: Path | None  # None: fixed (not watched)
    history: list[str] = field(default_factory=list)  # shas in the order they became current
    last_error: TemplateChange | None = None


def _template_paths(cfg_or_paths: Any) -> dict[str, Any]:
    """Config (its ``templates`` section) or a mapping role -> path | Template."""
    templates_cfg = getattr(cfg_or_paths, "templates", None)
    if templates_cfg is not None and not isinstance(cfg_or_paths, Mapping):
        return {role: getattr(templates_cfg, role) for role in ROLES if getattr(templates_cfg, role, None)}
    if isinstance(cfg_or_paths, Mapping):
        return dict(cfg_or_paths)
    raise TypeError(f"TemplateSet needs a Config or a mapping role -> path, got {type(cfg_or_paths).__name__}")


def _error_location(err: BaseException) -> tuple[int | None, str | None]:
    """The line and placeholder a TemplateError names (attributes when A's error carries them)."""
    line = getattr(err, "line", None) or getattr(err, "lineno", None)
    placeholder = getattr(err, "placeholder", None) or getattr(err, "name", None)
    if line is None or placeholder is None:  # fall back to the message: "...:LINE ... 'name'"
        import re

        text = str(err)
        if line is None:
            m = re.search(r"(?:line\s+|:)(\d+)\b", text)
            line = int(m.group(1)) if m else None
        if placeholder is None:
            m = re.search(r"\{([A-Za-z_][^{}]*)\}|'([A-Za-z_]\w*)'", text)
            placeholder = (m.group(1) or m.group(2)) if m else None
    return (int(line) if isinstance(line, (int, str)) and str(line).isdigit() else None,
            str(placeholder) if placeholder else None)


class TemplateSet:
    """The templates in use, one per role, reloaded from their files while a run goes on.

    ``cfg_or_paths``: a :class:`engine.config.Config` (paths from its ``templates`` section) or a
    mapping role -> file path or :class:`Template`. ``roles``: restrict to these roles (default: all
    given; a configured file that does not exist is skipped for roles other than rubricator and
    verifier, e.g. a missing scalar-judge template when the reward mode does not need it).
    ``store``/``run_id``: where versions and change events are recorded (optional).
    """

    def __init__(self, cfg_or_paths: Any, store: Any = None, run_id: str | int | None = None, *,
                 roles: tuple[str, ...] | None = None, base_dir: str | os.PathLike | None = None,
                 debounce_ms: int = 200, force_polling: bool | None = None):
        self._store = store
        self._run_id = run_id
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._listeners: list[Callable[[TemplateChange], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.debounce_ms = debounce_ms
        self.force_polling = force_polling
        self.step: int | None = None  # the trainer sets this so events carry the current step
        self.changes: list[TemplateChange] = []  # everything that happened, for UIs and tests
        base = Path(base_dir) if base_dir else None
        wanted = set(roles) if roles else None
        for role, value in _template_paths(cfg_or_paths).items():
            if wanted is not None and role not in wanted:
                continue
            if isinstance(value, Template):
                self._slots[role] = _Slot(role, value, None, [value.sha256])
                continue
            path = Path(value)
            if base is not None and not path.is_absolute():
                path = base / path
            else:
                path = resolve_template_path(path)  # "prompts/x.txt" works from any directory
            if not path.exists() and role not in ("rubricator", "verifier") and wanted is None:
                continue  # optional role whose file the user does not have
            tpl = Template.load(path, role)  # TemplateError names file, line and placeholder
            self._slots[role] = _Slot(role, tpl, path.resolve(), [tpl.sha256])
        for slot in self._slots.values():
            self._record_version(slot.template, slot.path)

    # ------------------------------------------------------------------ reading
    def current(self, role: str) -> Template:
        """The version of ``role`` in use now (valid, never a rejected edit)."""
        with self._lock:
            slot = self._slots.get(role)
            if slot is None:
                raise TemplateError(f"no {role} template is configured",
                                    hint=f"set templates.{role} in the config to a template file")
            return slot.template

    def versions(self) -> dict[str, str]:
        """role -> sha256 of the version in use."""
        with self._lock:
            return {role: s.template.sha256 for role, s in self._slots.items()}

    def roles(self) -> list[str]:
        return list(self._slots)

    def path(self, role: str) -> Path | None:
        slot = self._slots.get(role)
        return slot.path if slot else None

    def history(self, role: str) -> list[str]:
        """The shas that have been current for ``role`` in this process, oldest first."""
        with self._lock:
            slot = self._slots.get(role)
            return list(slot.history) if slot else []

    def last_error(self, role: str) -> TemplateChange | None:
        with self._lock:
            slot = self._slots.get(role)
            return slot.last_error if slot else None

    def add_listener(self, fn: Callable[[TemplateChange], None]) -> None:
        """``fn(change)`` is called (from the watcher thread) after every accepted or rejected reload."""
        self._listeners.append(fn)

    # ------------------------------------------------------------------ reloading
    def reload(self, role: str) -> TemplateChange | None:
        """Re-read ``role``'s file now. Returns the change, or None when the text is unchanged."""
        slot = self._slots.get(role)
        if slot is None or slot.path is None:
            return None
        path = slot.path
        previous = slot.template.sha256
        try:
            if not path.exists():
                raise TemplateError(f"{path}: the template file was removed",
                                    hint="restore the file; the previous version stays in use")
            text = _read_settled(path)
        except (OSError, UnicodeDecodeError) as err:
            change = TemplateChange(role, str(path), False, previous_sha256=previous,
                                    error=f"{path} cannot be read: {err}", step=self.step)
        except TemplateError as err:
            change = TemplateChange(role, str(path), False, previous_sha256=previous, error=str(err.message),
                                    step=self.step)
        else:
            try:
                tpl = Template.from_text(text, role, source=str(path))
            except TemplateError as err:
                line, placeholder = _error_location(err)
                import hashlib

                change = TemplateChange(role, str(path), False,
                                        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
                                        previous_sha256=previous, error=str(err.message), line=line,
                                        placeholder=placeholder, step=self.step)
            else:
                if tpl.sha256 == previous:
                    with self._lock:
                        slot.last_error = None
                    return None
                with self._lock:
                    slot.template = tpl
                    slot.history.append(tpl.sha256)
                    slot.last_error = None
                change = TemplateChange(role, str(path), True, sha256=tpl.sha256, previous_sha256=previous,
                                        step=self.step)
                self._record_version(tpl, path)
        if not change.accepted:
            with self._lock:
                if slot.last_error is not None and slot.last_error.sha256 == change.sha256 and \
                        slot.last_error.error == change.error:
                    return None  # the same broken text again (e.g. a second write event): say it once
                slot.last_error = change
        self._announce(change)
        return change

    def reload_all(self) -> list[TemplateChange]:
        return [c for c in (self.reload(r) for r in list(self._slots)) if c is not None]

    # ------------------------------------------------------------------ watching
    def start(self) -> "TemplateSet":
        """Start the watcher thread (idempotent). Returns self."""
        if self._thread is not None and self._thread.is_alive():
            return self
        if not any(s.path for s in self._slots.values()):
            return self
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._watch, name="ropd-template-watcher", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        return self

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self._thread = None

    @property
    def watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "TemplateSet":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _watch(self) -> None:
        import watchfiles

        by_path = {s.path: role for role, s in self._slots.items() if s.path is not None}
        dirs = sorted({str(p.parent) for p in by_path})
        # Catch up on edits made between loading and watching (the watcher only reports later ones).
        try:
            self.reload_all()
        except Exception:  # never let the watcher thread die on a surprise
            log.exception("template reload failed")
        self._ready.set()
        try:
            for changes in watchfiles.watch(*dirs, watch_filter=None, debounce=self.debounce_ms, step=50,
                                            stop_event=self._stop, recursive=False, raise_interrupt=False,
                                            force_polling=self.force_polling, yield_on_timeout=False):
                touched = []
                for _kind, changed in changes:
                    role = by_path.get(Path(changed).resolve()) if changed else None
                    if role and role not in touched:
                        touched.append(role)
                for role in touched:
                    try:
                        self.reload(role)
                    except Exception:
                        log.exception("template reload of %s failed", role)
        except Exception:
            log.exception("the template watcher stopped; edits are no longer picked up")
        finally:
            self._ready.set()

    # ------------------------------------------------------------------ recording
    def _record_version(self, tpl: Template, path: Path | None) -> None:
        if self._store is None:
            return
        try:
            kwargs: dict[str, Any] = {}
            if self._run_id is not None:  # the run used this version from this step on (curve marks)
                kwargs = {"run_id": self._run_id, "step": self.step}
            self._store.record_template(tpl.role, tpl.sha256, tpl.text, source=str(path) if path else None, **kwargs)
        except Exception as err:  # the store being busy must not break scoring
            log.warning("could not record %s template %s in the store: %s", tpl.role, tpl.sha256[:12], err)

    def _announce(self, change: TemplateChange) -> None:
        self.changes.append(change)
        _emit(change.message, logging.INFO if change.accepted else logging.WARNING)
        if self._store is not None and self._run_id is not None:
            kind = "template_changed" if change.accepted else "template_rejected"
            try:
                self._store.add_event(self._run_id, kind, change.message, step=change.step,
                                      data=change.as_event_data())
            except Exception as err:
                log.warning("could not record the %s event in the store: %s", kind, err)
        for fn in list(self._listeners):
            try:
                fn(change)
            except Exception:
                log.exception("template change listener failed")


def _read_settled(path: Path, attempts: int = 3, pause_s: float = 0.05) -> str:
    """Read a file an editor may still be writing (truncate + write): re-read until two reads agree."""
    import time

    text = path.read_text(encoding="utf-8")
    for _ in range(attempts):
        time.sleep(pause_s)
        again = path.read_text(encoding="utf-8")
        if again == text:
            break
        text = again
    return text


def _emit(message: str, level: int) -> None:
    """Log to ``ropd.templates``; with no logging set up, print to stderr (the run log)."""
    if log.hasHandlers():
        log.log(level, message)
    else:
        print(f"[templates] {message}", file=sys.stderr, flush=True)
