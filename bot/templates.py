"""Support prompt templates: the model, its validation, and the shipped set.

A template is one YAML file under ``prompts/`` (or one version in the store): the system prompt in
each language as Jinja text, the variables an operator can set (company, product, support hours...),
decoding parameters, escalation settings and the hand-over message shown to the end user.

Templates are data written by operators: everything wrong with one is found at once and reported
as a :class:`TemplateError` listing each problem with its field and line
(:mod:`bot.template_issues`), never as a traceback. The YAML document is read within bounds and
with its lines kept (:mod:`bot.template_yaml`); the Jinja texts are checked and rendered in a
sandbox (:mod:`bot.template_sandbox`); what both may cost is bounded while the work is done
(:mod:`bot.template_limits`).
"""

from __future__ import annotations

import json
import keyword
import math
import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot import template_yaml
from bot.escalation import DEFAULT_SENSITIVE_TOPICS
from bot.language import SUPPORTED, detect_language
from bot.template_issues import TemplateError, TemplateIssue, did_you_mean
from bot.template_limits import MAX_EXAMPLES
from bot.template_sandbox import compile_source, render, source_problems

__all__ = [
    "BUILTIN_VARIABLES",
    "DEFAULT_DIRECTORY",
    "REQUIRED_LANGUAGES",
    "EscalationSettings",
    "Example",
    "GenerationSettings",
    "Template",
    "TemplateError",
    "TemplateIssue",
    "TemplateLibrary",
]

DEFAULT_DIRECTORY = Path(__file__).resolve().parent.parent / "prompts"

#: Every template must have a system prompt, a title and a hand-over message in these languages.
REQUIRED_LANGUAGES: tuple[str, ...] = tuple(SUPPORTED)

#: Names Snapdesk provides at render time; a template may use them without declaring them.
BUILTIN_VARIABLES: tuple[str, ...] = (
    "language", "channel", "now", "user_name", "decline_marker", "screenshot_text", "screenshot_evidence",
)
MAX_SCREENSHOT_TEXT_CHARS = 2000  # what the local reading of a message's screenshots may add to a prompt

MAX_USER_NAME_CHARS = 64
MAX_NEW_TOKENS_LIMIT = 32_768
MAX_SENSITIVE_TOPICS = 500
MAX_SENSITIVE_TOPIC_CHARS = 100

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_VARIABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _clean_screenshot_text(text: str) -> str:
    """What OCR read in the user's screenshot: their content, bounded, control characters out
    (line breaks kept); control-token strings are neutralised by the caller, as for a user name."""
    text = re.sub(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]+", " ", str(text or ""))
    return text[:MAX_SCREENSHOT_TEXT_CHARS]


def _clean_user_name(user_name: str) -> str:
    """A display name comes from the end user: one line, bounded, never markup for the prompt."""
    name = _CONTROL_RE.sub(" ", str(user_name or ""))
    name = " ".join(name.split())
    return name[:MAX_USER_NAME_CHARS].strip()


def _iso_date(now: datetime | date | None) -> str:
    if now is None:
        now = datetime.now(timezone.utc)
    if isinstance(now, datetime):
        return now.date().isoformat()
    return now.isoformat()


# --------------------------------------------------------------------------------------------
# The model


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class GenerationSettings(_Model):
    """Decoding parameters for the engine; temperature 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0


class EscalationSettings(_Model):
    """When the bot hands a thread to a person."""

    confidence_threshold: float = 0.55  # below this the thread goes to a person
    decline_marker: str = "[[HANDOVER]]"  # what the model writes, alone on the first line, when it cannot help
    # Terms that always send the thread to a person (refunds, legal threats ...); a list here
    # replaces the defaults of bot/escalation.py. English terms match as words, Chinese as text.
    sensitive_topics: list[str] = Field(default_factory=lambda: list(DEFAULT_SENSITIVE_TOPICS))
    # Hand over (reason no_knowledge) when the help centre has no passage scoring SNAPDESK_KB_MIN_SCORE or more.
    require_knowledge: bool = False


class Example(_Model):
    """A case for the operator console's "try it": a user message, the screenshot it comes with, the outcome."""

    text: str = ""
    screenshot: str | None = None  # what the screenshot shows, in words; None for a text-only message
    expect: Literal["answer", "handover"]
    language: str = ""  # detected from the text when left out
    notes: str = ""  # what a good answer contains, for the operator

    @model_validator(mode="before")
    @classmethod
    def _fill_language(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and not data.get("language") and isinstance(data.get("text", ""), str):
            sample = f"{data.get('text') or ''} {data.get('screenshot') or ''}"
            data = {**data, "language": detect_language(sample)}
        return data


def _coerce_variables(data: Any) -> Any:
    """Numbers written without quotes (`refund_days: 14`) are text; anything else stays for the checks."""
    if isinstance(data, Mapping) and isinstance(data.get("variables"), Mapping):
        variables = {
            key: (str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value)
            for key, value in data["variables"].items()
        }
        data = {**data, "variables": variables}
    return data


class Template(_Model):
    """One support template. Build it with :meth:`from_yaml` / :meth:`from_dict`; treat it as read-only."""

    name: str
    title: dict[str, str]
    description: dict[str, str] = Field(default_factory=dict)
    default_language: str = "en"  # used when a conversation's language has no system prompt
    system_prompt: dict[str, str]
    variables: dict[str, str] = Field(default_factory=dict)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    escalation: EscalationSettings = Field(default_factory=EscalationSettings)
    handover_messages: dict[str, str]
    examples: list[Example] = Field(default_factory=list)
    # Show the answer while it is generated; text shown this way may still be withdrawn by a hand-over.
    stream: bool = False

    @model_validator(mode="before")
    @classmethod
    def _numbers_as_text(cls, data: Any) -> Any:
        return _coerce_variables(data)

    # ---- building and storing

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, check: bool = True) -> "Template":
        """Build from a plain mapping (a stored version, parsed JSON).

        Raises :class:`TemplateError` listing every problem: the structure's and, unless
        ``check=False``, everything :meth:`validate` finds too.
        """
        template, structure, content = cls._collect(data, check)
        issues = structure + content
        if issues:
            name = data.get("name") if isinstance(data, Mapping) and isinstance(data.get("name"), str) else None
            raise TemplateError(issues, name=name)
        assert template is not None
        return template

    @classmethod
    def from_yaml(cls, text: str, *, check: bool = True) -> "Template":
        """Parse a YAML document; raises :class:`TemplateError` listing every problem, with document lines."""
        root, data, issues = template_yaml.read(text)
        template, structure_issues, content_issues = cls._collect(data, check)
        issues += [template_yaml.locate(root, issue, relative=False) for issue in structure_issues]
        issues += [template_yaml.locate(root, issue, relative=True) for issue in content_issues]
        issues.sort(key=lambda issue: issue.line or 0)  # in document order, for an editor
        if issues:
            name = data.get("name") if isinstance(data.get("name"), str) else None
            raise TemplateError(issues, name=name)
        assert template is not None
        return template

    @classmethod
    def _build(cls, data: Any) -> tuple["Template | None", list[TemplateIssue]]:
        if not isinstance(data, Mapping):
            return None, [TemplateIssue("", "a template is a mapping of keys (name:, title:, system_prompt: ...)")]
        try:
            return cls.model_validate(dict(data)), []
        except ValidationError as exc:
            return None, [_structure_issue(error) for error in exc.errors(include_url=False)]

    @classmethod
    def _collect(cls, data: Any, check: bool) -> tuple["Template | None", list[TemplateIssue], list[TemplateIssue]]:
        """(template, structure issues, content issues); content is checked even when the structure
        is broken, on a copy with the broken parts left out, so the operator sees everything at once."""
        template, structure = cls._build(data)
        if not check or not isinstance(data, Mapping):
            return template, structure, []
        if template is not None:
            return template, structure, template.validate()
        repaired: Any = _deep_copy(data)
        for _ in range(8):
            try:
                partial = cls.model_validate(repaired)
                break
            except ValidationError as exc:
                repaired = _drop_broken(repaired, exc.errors(include_url=False))
        else:
            return None, structure, []
        broken = [issue.field for issue in structure]
        content = [
            issue for issue in partial.validate()
            if not any(_same_or_inside(issue.field, field) or _same_or_inside(field, issue.field) for field in broken)
        ]
        return None, structure, content

    def to_dict(self) -> dict[str, Any]:
        """Every key in a fixed order: plain JSON/YAML-safe data that :meth:`from_dict` restores.

        Four keys are written only when they differ from their defaults, so a stored version keeps
        following Snapdesk's list and stays as written: ``escalation.sensitive_topics``,
        ``escalation.require_knowledge``, ``stream`` and ``examples`` (an older version's, read and
        kept; a template's regression cases live in prompts/cases/ and the database).
        """
        data = self.model_dump(mode="python")
        if not data["examples"]:
            del data["examples"]
        if data["escalation"]["sensitive_topics"] == list(DEFAULT_SENSITIVE_TOPICS):
            del data["escalation"]["sensitive_topics"]
        if data["escalation"]["require_knowledge"] is False:
            del data["escalation"]["require_knowledge"]
        if data["stream"] is False:
            del data["stream"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    def to_yaml(self) -> str:
        """YAML in the shipped files' layout (multi-line text as ``|`` blocks); :meth:`from_yaml` restores it."""
        return template_yaml.dump(self.to_dict())

    # ---- languages

    @property
    def languages(self) -> list[str]:
        return list(self.system_prompt)

    def resolve_language(self, language: str | None) -> str:
        """The language actually used: the requested one (``zh-CN`` counts as ``zh``) or the fallback."""
        wanted = (language or "").strip().replace("_", "-")
        candidates = [wanted, wanted.lower(), wanted.split("-")[0].lower()]
        for candidate in candidates:
            if candidate and candidate in self.system_prompt:
                return candidate
        for fallback in (self.default_language, "en", *self.system_prompt):
            if fallback in self.system_prompt:
                return fallback
        return "en"

    # ---- rendering

    def render_system_prompt(self, language: str, **turn: Any) -> str:
        """The system prompt for one turn; `turn` is what :meth:`context` takes besides the language.

        Raises :class:`TemplateError` (for the operator) on any problem.
        """
        return self._render_field("system_prompt", self.resolve_language(language), turn)

    def render_handover(self, language: str, overrides: Mapping[str, Any] | None = None, **turn: Any) -> str:
        """The message the end user sees when the thread goes to a person; `turn` as for the system prompt."""
        lang = self.resolve_language(language)
        if lang not in self.handover_messages:
            lang = next((code for code in (self.default_language, "en") if code in self.handover_messages), lang)
        return self._render_field("handover_messages", lang, {**turn, "overrides": overrides})

    def context(
        self,
        language: str,
        *,
        channel: str = "widget",
        user_name: str = "",
        now: datetime | date | None = None,
        overrides: Mapping[str, Any] | None = None,
        screenshot_text: str = "",
        screenshot_evidence: str = "",
    ) -> dict[str, str]:
        """The names a template sees: its variables (with overrides applied), then the built-ins.

        Override keys the template does not declare are ignored (a channel's settings may outlive a
        template switch); built-ins cannot be overridden.
        """
        values = dict(self.variables)
        for key, value in (overrides or {}).items():
            if key not in self.variables or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise TemplateError(TemplateIssue(f"overrides.{key}", "an override must be text"))
            values[key] = str(value)
        values.update(
            language=language,
            channel=str(channel or ""),
            now=_iso_date(now),
            user_name=_clean_user_name(user_name),
            decline_marker=self.escalation.decline_marker,
            screenshot_text=_clean_screenshot_text(screenshot_text),
            screenshot_evidence=_clean_screenshot_text(screenshot_evidence),
        )
        return values

    def _render_field(self, key: str, lang: str, turn: Mapping[str, Any]) -> str:
        field = f"{key}.{lang}"
        source = getattr(self, key).get(lang)
        if source is None:
            raise TemplateError(TemplateIssue(field, "missing"), name=self.name)
        problems = source_problems(source, self._known_names(), field)
        if problems:
            raise TemplateError(problems, name=self.name)
        context = self.context(lang, **turn)
        try:
            return render(compile_source(source), context, field)
        except TemplateError as exc:
            exc.name = self.name
            raise

    def _known_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.variables, *BUILTIN_VARIABLES]))

    # ---- validation

    def validate(self, overrides: Mapping[str, Any] | None = None) -> list[TemplateIssue]:  # type: ignore[override]
        """Every problem at once, for "validation as you type"; an empty list means the template is ready.

        Lines count within each field's own text. With ``overrides``, also checks those values.
        """
        issues: list[TemplateIssue] = []
        add = issues.append

        if not _NAME_RE.match(self.name):
            add(TemplateIssue("name", "use 1-64 lowercase letters, digits, '-' or '_', not starting with '-' or '_'"))

        for key in ("title", "description", "system_prompt", "handover_messages"):
            for code in getattr(self, key):
                if not _LANGUAGE_RE.match(code):
                    add(TemplateIssue(f"{key}.{code}", "not a language code (use e.g. 'en' or 'zh')"))
        for code in REQUIRED_LANGUAGES:
            for key, what in _REQUIRED_TEXTS:
                if not getattr(self, key).get(code, "").strip():
                    add(TemplateIssue(f"{key}.{code}", f"the {_language_name(code)} {what} is missing"))
        fallback = self.default_language
        if fallback not in self.system_prompt or fallback not in self.handover_messages:
            add(TemplateIssue("default_language", f"'{fallback}' needs a system prompt and a hand-over message"))

        for name in self.variables:
            if not _VARIABLE_RE.match(name) or keyword.iskeyword(name) or name in ("true", "false", "none"):
                add(TemplateIssue(f"variables.{name}", "use letters, digits and '_', starting with a letter"))
            elif name in BUILTIN_VARIABLES:
                add(TemplateIssue(f"variables.{name}", f"'{name}' is provided by Snapdesk; choose another name"))

        gen = self.generation
        if gen.max_new_tokens < 1:
            add(TemplateIssue("generation.max_new_tokens", "must be at least 1"))
        elif gen.max_new_tokens > MAX_NEW_TOKENS_LIMIT:
            add(TemplateIssue("generation.max_new_tokens", f"must be at most {MAX_NEW_TOKENS_LIMIT}"))
        if not (math.isfinite(gen.temperature) and 0.0 <= gen.temperature <= 2.0):
            add(TemplateIssue("generation.temperature", "must be between 0 (greedy) and 2"))
        if not (math.isfinite(gen.top_p) and 0.0 < gen.top_p <= 1.0):
            add(TemplateIssue("generation.top_p", "must be greater than 0 and at most 1"))

        esc = self.escalation
        if not (math.isfinite(esc.confidence_threshold) and 0.0 <= esc.confidence_threshold <= 1.0):
            add(TemplateIssue("escalation.confidence_threshold", "must be between 0 and 1"))
        marker = esc.decline_marker
        if not marker.strip():
            add(TemplateIssue("escalation.decline_marker", "must not be empty"))
        elif marker != marker.strip() or "\n" in marker or len(marker) > 64:
            add(TemplateIssue("escalation.decline_marker", "one line of at most 64 characters, no surrounding spaces"))
        topics = esc.sensitive_topics
        if len(topics) > MAX_SENSITIVE_TOPICS:
            add(TemplateIssue("escalation.sensitive_topics", f"at most {MAX_SENSITIVE_TOPICS} terms"))
        for i, topic in enumerate(topics):
            if not topic.strip() or topic != topic.strip() or "\n" in topic or len(topic) > MAX_SENSITIVE_TOPIC_CHARS:
                add(TemplateIssue(
                    f"escalation.sensitive_topics[{i}]",
                    f"each term is one line of 1-{MAX_SENSITIVE_TOPIC_CHARS} characters, no surrounding spaces",
                ))

        issues += self._text_issues(bool(marker.strip()))
        if len(self.examples) > MAX_EXAMPLES:
            add(TemplateIssue("examples", f"at most {MAX_EXAMPLES} examples (this template has {len(self.examples)})",
                              limit=True))
        issues += self._example_issues()
        if overrides:
            issues += self._override_issues(overrides)
        return issues

    def _text_issues(self, check_marker: bool) -> list[TemplateIssue]:
        issues: list[TemplateIssue] = []
        known = self._known_names()
        marker = self.escalation.decline_marker
        for key, texts in (("system_prompt", self.system_prompt), ("handover_messages", self.handover_messages)):
            for code, source in texts.items():
                field = f"{key}.{code}"
                problems = source_problems(source, known, field)
                issues += problems
                if problems or not source.strip():
                    continue
                try:  # a trial render with the defaults finds what only shows when it runs
                    text = render(compile_source(source), self.context(code, now=date(2000, 1, 1)), field)
                except TemplateError as exc:
                    issues += exc.errors
                    continue
                if not check_marker:
                    continue
                if key == "system_prompt" and marker not in text:
                    issues.append(TemplateIssue(
                        field,
                        f"never tells the model to write the decline marker {marker}, so the bot cannot hand over; "
                        "add an instruction with {{ decline_marker }}",
                    ))
                if key == "handover_messages" and marker in text:
                    message = f"must not contain the decline marker {marker}; end users see this text"
                    issues.append(TemplateIssue(field, message))
        return issues

    def _example_issues(self) -> list[TemplateIssue]:
        issues: list[TemplateIssue] = []
        seen: dict[tuple[str, str, str], int] = {}
        for index, example in enumerate(self.examples):
            field = f"examples[{index}]"
            text = example.text.strip()
            shot = (example.screenshot or "").strip()
            if not text and not shot:
                issues.append(TemplateIssue(field, "an example needs a message, a screenshot description, or both"))
                continue
            if example.screenshot is not None and not shot:
                issues.append(TemplateIssue(f"{field}.screenshot", "empty; use null for a text-only message"))
            if example.language not in self.system_prompt:
                message = f"'{example.language}' has no system prompt in this template"
                issues.append(TemplateIssue(f"{field}.language", message))
            key = (" ".join(text.lower().split()), " ".join(shot.lower().split()), example.language)
            if key in seen:
                issues.append(TemplateIssue(field, f"duplicates examples[{seen[key]}]"))
            else:
                seen[key] = index
        return issues

    def _override_issues(self, overrides: Mapping[str, Any]) -> list[TemplateIssue]:
        issues: list[TemplateIssue] = []
        for key, value in overrides.items():
            field = f"overrides.{key}"
            if key in BUILTIN_VARIABLES:
                issues.append(TemplateIssue(field, f"'{key}' is provided by Snapdesk and cannot be overridden"))
            elif key not in self.variables:
                known = tuple(self.variables)
                issues.append(TemplateIssue(field, f"this template has no variable '{key}'{did_you_mean(key, known)}"))
            elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
                issues.append(TemplateIssue(field, "an override must be text"))
        return issues


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


_EMPTY_REQUIRED: dict[str, Any] = {"name": "", "title": {}, "system_prompt": {}, "handover_messages": {}}


def _drop_broken(data: Any, errors: list[Mapping[str, Any]]) -> Any:
    """`data` without the parts the errors point at, so what remains can still be checked."""
    for error in errors:
        loc = [part for part in error.get("loc", ()) if part != "[key]"]
        if error.get("type") == "missing":
            loc = loc[:-1]  # a required key is missing: leave out what holds it
        if not loc:
            continue
        if len(loc) == 1 and loc[0] in _EMPTY_REQUIRED and isinstance(data, dict):
            data[loc[0]] = _deep_copy(_EMPTY_REQUIRED[loc[0]])
            continue
        parent = data
        for part in loc[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        last = loc[-1]
        if isinstance(parent, dict) and last in parent:
            del parent[last]
        elif isinstance(parent, list) and isinstance(last, int) and last < len(parent):
            parent[last] = None  # removed below, keeping the other indexes stable for this round
    if isinstance(data, dict) and isinstance(data.get("examples"), list):
        data["examples"] = [example for example in data["examples"] if example is not None]
    return data


def _same_or_inside(field: str, container: str) -> bool:
    return field == container or field.startswith(container + ".") or field.startswith(container + "[")


_REQUIRED_TEXTS = (("title", "title"), ("system_prompt", "system prompt"), ("handover_messages", "hand-over message"))


def _language_name(code: str) -> str:
    return {"en": "English", "zh": "Chinese"}.get(code, f"'{code}'")


_STRUCTURE_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "unknown key (check the spelling)",
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "literal_error": "must be one of: answer, handover",
}


def _structure_issue(error: Mapping[str, Any]) -> TemplateIssue:
    """One error of the schema in the operator's words: the field as a path, and what it must be."""
    loc = [part for part in error.get("loc", ()) if part not in ("[key]",)]
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    field = "".join(parts)
    kind = error.get("type", "")
    message = _STRUCTURE_MESSAGES.get(kind, error.get("msg", "invalid value"))
    if kind in ("dict_type", "model_type"):
        top = loc[0] if loc else ""
        if top in ("title", "description", "system_prompt", "handover_messages"):
            message = "must be a mapping of language to text, e.g. {en: ..., zh: ...}"
        elif top == "variables":
            message = "must be a mapping of variable names to text"
        else:
            message = "must be a mapping of keys"
    if kind == "string_type":
        message = "must be text (put it in quotes)"
    return TemplateIssue(field, message)


# --------------------------------------------------------------------------------------------
# The shipped set


class TemplateLibrary:
    """The templates shipped as ``prompts/*.yaml``: each file is one template, named after the file."""

    def __init__(self, directory: Path | str = DEFAULT_DIRECTORY):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"template directory not found: {self.directory}")
        templates: dict[str, Template] = {}
        issues: list[TemplateIssue] = []
        for path in sorted(self.directory.glob("*.yaml")):
            try:
                template = Template.from_yaml(path.read_text(encoding="utf-8"))
            except TemplateError as exc:
                issues += [TemplateIssue(f"{path.name}: {i.field}", i.message, i.line) for i in exc.errors]
                continue
            if template.name != path.stem:
                message = f"'{template.name}' must match the file name '{path.stem}'"
                issues.append(TemplateIssue(f"{path.name}: name", message))
                continue
            templates[template.name] = template
        if issues:
            raise TemplateError(issues, name=str(self.directory.name))
        self._templates = templates

    def names(self) -> list[str]:
        return sorted(self._templates)

    def get(self, name: str) -> Template:
        try:
            return self._templates[name]
        except KeyError:
            raise KeyError(f"no template named {name!r} (known: {', '.join(self.names())})") from None

    def shipped(self) -> dict[str, Template]:
        return dict(self._templates)

    def __contains__(self, name: object) -> bool:
        return name in self._templates

    def __iter__(self) -> Iterator[Template]:
        return iter([self._templates[name] for name in self.names()])

    def __len__(self) -> int:
        return len(self._templates)
