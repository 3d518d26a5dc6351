"""The configured templates (``cfg.templates``), loaded once per role on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import Config
    from engine.templates.render import Template


class StaticTemplates:
    """The configured templates (``cfg.templates``), loaded once: the fallback when no live TemplateSet is given.

    Anything with ``.current(role) -> Template`` can replace it (G's TemplateSet reloads edits live).
    """

    def __init__(self, cfg: "Config"):
        self.cfg = cfg
        self._cache: dict[str, "Template"] = {}

    def current(self, role: str) -> "Template":
        tpl = self._cache.get(role)
        if tpl is None:
            from engine.templates.render import Template

            path = getattr(self.cfg.templates, role, None)
            tpl = Template.load(path, role) if path else Template.default(role)
            self._cache[role] = tpl
        return tpl

    def versions(self) -> dict[str, str]:
        return {role: t.sha256 for role, t in self._cache.items()}
