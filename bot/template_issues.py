"""How every stage of reading and rendering a template tells the operator what is wrong.

A template is read as YAML, checked against its schema and rendered in a sandbox, and each stage
finds its own problems; they all report them the same way, so the operator sees one list, each
problem with its field and line, and a server can tell a limit hit (refused as bad input) from a
draft that is merely invalid.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class TemplateIssue:
    """One problem in a template, for the operator.

    ``field`` is a path such as ``system_prompt.en``, ``escalation.confidence_threshold`` or
    ``examples[2].text``. ``line`` is 1-based: from :meth:`Template.validate` it counts within the
    field's own text (a Jinja system prompt, say); from :meth:`Template.from_yaml` it counts within
    the YAML document, so an editor can point at it. ``limit`` marks a problem of size or
    complexity (nesting, length, time) rather than of content.
    """

    field: str
    message: str
    line: int | None = None
    limit: bool = False

    def __str__(self) -> str:
        where = self.field
        if self.line is not None:
            where = f"{where}, line {self.line}" if where else f"line {self.line}"
        return f"{where}: {self.message}" if where else self.message


class TemplateError(Exception):
    """A template that cannot be loaded or rendered; ``errors`` lists every problem found."""

    def __init__(self, errors: list[TemplateIssue] | TemplateIssue | str, *, name: str | None = None):
        if isinstance(errors, str):
            errors = [TemplateIssue("", errors)]
        elif isinstance(errors, TemplateIssue):
            errors = [errors]
        self.errors: list[TemplateIssue] = list(errors) or [TemplateIssue("", "invalid template")]
        self.name = name
        super().__init__(self._summary())

    @property
    def limits(self) -> list[TemplateIssue]:
        """The problems that are limits hit (too big, too deep, too slow), not mistakes in content."""
        return [issue for issue in self.errors if issue.limit]

    def _summary(self) -> str:
        subject = f"template '{self.name}'" if self.name else "the template"
        if len(self.errors) == 1:
            return str(self.errors[0])
        lines = [f"{len(self.errors)} problems in {subject}:"]
        lines += [f"- {issue}" for issue in self.errors]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._summary()


def did_you_mean(name: str, known: tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to a misspelt `name`; empty when none is close."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f" (did you mean '{match[0]}'?)" if match else ""
