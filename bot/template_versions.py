"""Which template version is live for a channel, and the fall-back when one breaks.

The shipped files in prompts/ seed version 1 of each template; operators publish newer
versions. An end user must never see a template error: if the live version fails to
render, the previous published versions are tried, then the shipped file. A version being
rolled out (bot/rollouts.py) answers the conversations that drew it; if it fails to render,
they get the live chain instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

from . import queries, rollouts
from .store import Store
from .templates import Template, TemplateError, TemplateLibrary

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "general"


@dataclass(frozen=True)
class RenderedPrompt:
    template: Template
    version: int
    system_prompt: str


@lru_cache(maxsize=256)
def _read(body: str) -> Template | TemplateError:
    try:
        return Template.from_yaml(body)
    except TemplateError as exc:
        return exc


def _parse(body: str) -> Template:
    """Stored versions are parsed once, not on every turn: a version that cannot be read (one
    stored before today's limits, say) costs its reading once too, not on every turn."""
    found = _read(body)
    if isinstance(found, TemplateError):
        raise TemplateError(found.errors, name=found.name)
    return found


class PublishedTemplates:
    def __init__(self, store: Store, library: TemplateLibrary, default: str = DEFAULT_TEMPLATE) -> None:
        self.store = store
        self.library = library
        self.default = default

    def seed(self) -> None:
        """Store each shipped template as published version 1 unless it has versions already."""
        for name in self.library.names():
            if not self.store.template_versions(name):
                self.store.add_template_version(name, self.library.get(name).to_yaml(), author="snapdesk", publish=True)

    def template_name_for(self, channel: str) -> str:
        name = self.store.channel_template(channel) or self.default
        return name if name in self.library.names() or self.store.template_versions(name) else self.default

    def candidates(self, name: str) -> list[tuple[Template, int]]:
        """Published versions newest first, then the shipped file (version 0 when unstored)."""
        found: list[tuple[Template, int]] = []
        for row in self.store.published_template_versions(name):
            try:
                found.append((_parse(row["body"]), row["version"]))
            except TemplateError as exc:
                log.error("template %s version %s cannot be read: %s", name, row["version"], exc)
        if name in self.library.names():
            found.append((self.library.get(name), 0))
        return found

    def render_for(self, channel: str, language: str, user_name: str = "",
                   conversation: Mapping[str, Any] | None = None, **screenshots: str) -> RenderedPrompt:
        """`screenshots`: screenshot_text and screenshot_evidence of the message being answered;
        `conversation` (its id and created_at): the one answered, which may take part in a rollout."""
        name = self.template_name_for(channel)
        if conversation is not None:
            candidate = self._render_candidate(name, channel, language, user_name, conversation, screenshots)
            if candidate is not None:
                return candidate
        try:
            return self._render(name, channel, language, user_name, screenshots)
        except TemplateError:
            if name == self.default:
                raise
            return self._render(self.default, channel, language, user_name, screenshots)

    def _render_candidate(self, name: str, channel: str, language: str, user_name: str,
                          conversation: Mapping[str, Any], screenshots: dict) -> RenderedPrompt | None:
        """The rolled-out version for a conversation that drew it; None for the live chain."""
        rollout = rollouts.candidate_for(self.store, channel, name, conversation)
        if rollout is None:
            return None
        try:
            template = _parse(queries.template_version_body(self.store, name, rollout.version) or "")
            prompt = template.render_system_prompt(language, channel=channel, user_name=user_name, **screenshots)
        except TemplateError as exc:
            log.error("template %s version %s (rolled out on %s) failed to render, answering with the live "
                      "version: %s", name, rollout.version, channel, exc)
            return None
        return RenderedPrompt(template, rollout.version, prompt)

    def _render(self, name: str, channel: str, language: str, user_name: str, screenshots: dict) -> RenderedPrompt:
        for template, version in self.candidates(name):
            try:
                prompt = template.render_system_prompt(language, channel=channel, user_name=user_name, **screenshots)
                return RenderedPrompt(template, version, prompt)
            except TemplateError as exc:
                log.error("template %s version %s failed to render, trying an older one: %s", name, version, exc)
        raise TemplateError([])  # nothing usable: the caller hands the turn over
