"""Support prompt templates: the model, loading, validation and sandboxed rendering.

A template is one YAML file under ``prompts/`` (or one version in the store): the system prompt in
each language as Jinja text, the variables an operator can set (company, product, support hours...),
decoding parameters, escalation settings and the hand-over message shown to the end user.

Templates are data written by operators, so rendering is sandboxed:

* one shared :class:`jinja2.sandbox.SandboxedEnvironment`, ``StrictUndefined`` (an unknown variable is an
  error, never silently empty), autoescape off (a prompt is not HTML);
* no globals (``range``, ``lipsum``, ``cycler``...), a short list of text filters, and no attribute
  access, function calls, loops, macros, ``set`` or includes: a prompt needs variables, filters and
  ``{% if %}``, nothing more. Every template is checked statically before it is compiled, so a problem
  is reported with its line before anything runs; the sandbox itself stays as a second wall;
* only plain data (text, numbers, true/false, lists of them) can become text, and what reading and
  rendering may cost is bounded while the work is done (:mod:`bot.template_limits`): YAML and
  Jinja nesting, source and output sizes, every value built with ``~``, ``+``, ``*`` or a filter,
  and the time one render takes;
* every failure becomes a :class:`TemplateError` with a message fit for an operator, never a traceback;
  one caused by a limit is marked as such (``TemplateIssue.limit``), so a server can refuse it as
  bad input rather than as an invalid draft.

Compiled templates are cached by source text, so rendering on every chat turn is cheap.
"""

from __future__ import annotations

import difflib
import functools
import json
import keyword
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS as _JINJA_FILTERS
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bot.escalation import DEFAULT_SENSITIVE_TOPICS
from bot.language import SUPPORTED, detect_language
from bot.template_limits import (
    MAX_EXAMPLES,
    MAX_OUTPUT_CHARS,
    MAX_REPEAT_CHARS,
    MAX_SOURCE_CHARS,
    MAX_VALUE_CHARS,
    MAX_YAML_CHARS,
    BoundedLoader,
    LimitExceeded,
    YamlTooBig,
    check_value,
    is_data,
    token_problem,
    not_plain,
    start_clock,
    stop_clock,
    text_size,
    tick,
    tree_problem,
)

__all__ = [
    "BUILTIN_VARIABLES",
    "DEFAULT_DIRECTORY",
    "ENVIRONMENT",
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
BUILTIN_VARIABLES: tuple[str, ...] = ("language", "channel", "now", "user_name", "decline_marker")

MAX_USER_NAME_CHARS = 64
MAX_NEW_TOKENS_LIMIT = 32_768
MAX_SENSITIVE_TOPICS = 500
MAX_SENSITIVE_TOPIC_CHARS = 100

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_VARIABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


# --------------------------------------------------------------------------------------------
# Problems


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


# --------------------------------------------------------------------------------------------
# The sandbox


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b ~ c`` to a call of :meth:`_PromptSandbox.bounded_join`, which measures before joining."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _PromptSandbox(SandboxedEnvironment):
    """The sandbox, where a template handles plain data only and every value it builds is bounded.

    The places where a value comes into a template or turns into text are all intercepted: item
    and attribute lookups (the only way to reach a method), ``~``, ``+``, ``*``, ``**``, ``%``,
    every filter (see :func:`_guard_filter`) and the output (``finalize``). Each checks the time
    budget, refuses anything but plain data, and measures a result before it is made.
    """

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        tick()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if max(times, 0) and text_size(seq, MAX_REPEAT_CHARS) * max(times, 0) > MAX_REPEAT_CHARS:
                        raise LimitExceeded(f"repeating text beyond {MAX_REPEAT_CHARS} characters is not allowed")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                if text_size(left, MAX_VALUE_CHARS) + text_size(right, MAX_VALUE_CHARS) > MAX_VALUE_CHARS:
                    raise LimitExceeded(f"joining text with + beyond {MAX_VALUE_CHARS} characters is not allowed")
        elif operator == "**":
            if isinstance(right, (int, float)) and isinstance(left, (int, float)):
                if abs(right) > 64 or abs(left) > 2**64:
                    raise LimitExceeded("powers above 64, or of numbers above 2**64, are not allowed")
        elif operator == "%" and isinstance(left, str):
            raise SecurityError("'%' text formatting is not allowed; join text with ~ instead")
        return super().call_binop(context, operator, left, right)

    def bounded_join(self, parts: tuple[Any, ...]) -> str:
        """``a ~ b ~ ...``: every part measured (and refused unless plain) before anything is joined."""
        tick()
        total = 0
        for part in parts:
            total += text_size(part, MAX_VALUE_CHARS - total)
            if total > MAX_VALUE_CHARS:
                raise LimitExceeded(f"joining text with ~ beyond {MAX_VALUE_CHARS} characters is not allowed")
        return "".join([str(part) for part in parts])

    def getitem(self, obj: Any, argument: Any) -> Any:
        tick()
        value = super().getitem(obj, argument)
        if not is_data(value):  # `text['upper']` falls back to the attribute: a method
            raise not_plain(value)
        return value

    def getattr(self, obj: Any, attribute: str) -> Any:
        tick()
        value = super().getattr(obj, attribute)
        if not is_data(value):
            raise not_plain(value)
        return value


def _finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` passes here before it becomes text: plain data of bounded size only."""
    tick()
    return check_value(value, MAX_OUTPUT_CHARS, f"the rendered text is longer than {MAX_OUTPUT_CHARS} characters")


def _guard_filter(name: str, function: Any) -> Any:
    """`function` (a Jinja filter) taking and giving plain data of bounded size only.

    A string argument is let through whatever its length (it exists already, and ``truncate``
    exists to shorten it); anything else is measured first, because a filter may turn it into text.
    """
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0  # the environment or context

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        tick()
        for arg in (*args[skip:], *kwargs.values()):
            if not isinstance(arg, (str, Undefined)):
                check_value(arg, MAX_VALUE_CHARS,
                            f"the value given to the '{name}' filter is longer than {MAX_VALUE_CHARS} characters")
        result = function(*args, **kwargs)
        return check_value(result, MAX_VALUE_CHARS,
                           f"the result of the '{name}' filter is longer than {MAX_VALUE_CHARS} characters")

    return guarded


#: Filters a template may use: text in, text (or a number) out, never much longer than the input.
ALLOWED_FILTERS: tuple[str, ...] = (
    "abs", "capitalize", "count", "d", "default", "first", "float", "int", "last", "length",
    "lower", "round", "string", "striptags", "title", "trim", "truncate", "upper", "wordcount",
)

#: The one environment every template renders in.
ENVIRONMENT = _PromptSandbox(
    undefined=StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    auto_reload=False,
    finalize=_finalize,
)
ENVIRONMENT.globals.clear()
ENVIRONMENT.filters = {name: _guard_filter(name, _JINJA_FILTERS[name]) for name in ALLOWED_FILTERS}

_STATEMENT_TAGS: dict[type[nodes.Node], str] = {
    nodes.For: "for",
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.Assign: "set",
    nodes.AssignBlock: "set",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
    nodes.Block: "block",
    nodes.With: "with",
    nodes.ExprStmt: "do",
}


@dataclass(frozen=True)
class _Compiled:
    template: jinja2.Template | None
    problems: tuple[tuple[str, int | None], ...]  # (message, line within the source)
    limits: tuple[tuple[str, int | None], ...] = ()  # the same, for limits hit (too long, too deep)


def _closest(name: str, known: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _expression_text(node: nodes.Node) -> str:
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_expression_text(node.node)}.{node.attr}"
    return "..."


def _check_tree(tree: nodes.Template) -> list[tuple[str, int | None]]:
    """What a template may not do, found before it runs: (message, line) pairs."""
    problems: list[tuple[str, int | None]] = []
    names: list[tuple[str, int]] = []

    def visit(node: nodes.Node) -> bool:
        """Post-order; True when the subtree holds a forbidden attribute or call (report it once)."""
        blocked = False
        for child in node.iter_child_nodes():
            blocked = visit(child) or blocked
        line = getattr(node, "lineno", None)
        tag = _STATEMENT_TAGS.get(type(node))
        if tag is not None:
            problems.append(
                (f"'{{% {tag} %}}' is not supported in templates; use variables, filters and {{% if %}}", line)
            )
        elif isinstance(node, nodes.Getattr):
            if not blocked:
                if node.attr.startswith("_"):
                    problems.append((f"access to attribute '{node.attr}' is not allowed", line))
                else:
                    problems.append(
                        (f"attribute access ('{_expression_text(node)}') is not allowed; use a filter", line)
                    )
            blocked = True
        elif isinstance(node, nodes.Getitem):
            key = node.arg.value if isinstance(node.arg, nodes.Const) else None
            if isinstance(key, str) and not blocked:
                if key.startswith("_"):
                    problems.append((f"access to attribute '{key}' is not allowed", line))
                    blocked = True
        elif isinstance(node, nodes.Call):
            if not blocked:
                problems.append((f"calling '{_expression_text(node.node)}()' is not allowed", line))
            blocked = True
        elif isinstance(node, nodes.Filter) and node.name not in ENVIRONMENT.filters:
            problems.append(
                (f"filter '{node.name}' is not available (available: {', '.join(ALLOWED_FILTERS)})", line)
            )
        elif isinstance(node, nodes.Name):
            (names if node.ctx == "load" else stored).append((node.name, line))
        return blocked

    stored: list[tuple[str, int | None]] = []
    visit(tree)
    assigned = {name for name, _ in stored}  # loop and `set` targets: already reported as not supported
    for name, line in names:
        if name in assigned:
            continue
        problems.append((f"\0{name}", line))  # resolved against the template's variables later
    return problems


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> _Compiled:
    """Parse, check and compile one source text; cached, since the same prompt renders every turn.

    Size and nesting are checked before the parser (which recurses once per bracket) and before
    the compiler (which recurses once per level of the tree) get to see the text.
    """
    if len(source) > MAX_SOURCE_CHARS:
        return _Compiled(None, (), ((f"the text is longer than {MAX_SOURCE_CHARS} characters", None),))
    too_deep = token_problem(ENVIRONMENT.lex(source))
    if too_deep is not None:
        return _Compiled(None, (), (too_deep,))
    try:
        tree = ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return _Compiled(None, ((f"syntax error: {exc.message or 'invalid syntax'}", exc.lineno),))
    except RecursionError:  # a wall behind the nesting check
        return _Compiled(None, (), (("the text is nested too deeply to read", None),))
    except ValueError as exc:  # a wall behind the length check of numbers
        return _Compiled(None, ((f"syntax error: {exc}".split(";")[0], None),))
    too_deep = tree_problem(tree)
    if too_deep is not None:
        return _Compiled(None, (), (too_deep,))
    problems = _check_tree(tree)
    if any(not message.startswith("\0") for message, _ in problems):
        return _Compiled(None, tuple(problems))
    try:
        compiled = ENVIRONMENT.from_string(tree)
    except jinja2.TemplateError as exc:  # an unknown test (`is foo`) and the like
        message = (exc.message or "invalid template").rstrip(".")
        return _Compiled(None, ((f"syntax error: {message}", getattr(exc, "lineno", None)),))
    except RecursionError:
        return _Compiled(None, (), (("the text is nested too deeply to compile", None),))
    return _Compiled(compiled, tuple(problems))


def _source_problems(source: str, known: tuple[str, ...], field: str) -> list[TemplateIssue]:
    """Every static problem of `source`, unknown variables included, given the names it may use."""
    compiled = _compile(source)
    if compiled.limits:
        return [TemplateIssue(field, message, line, limit=True) for message, line in compiled.limits]
    found: list[tuple[str, int | None]] = []
    seen: set[tuple[str, int | None]] = set()
    for message, line in compiled.problems:
        if message.startswith("\0"):
            name = message[1:]
            if name in known:
                continue
            message = f"unknown variable '{name}'{_closest(name, known)}; declare it under 'variables'"
        if (message, line) not in seen:
            seen.add((message, line))
            found.append((message, line))
    return [TemplateIssue(field, message, line) for message, line in found]


_UNSAFE_RE = re.compile(r"access to attribute '([^']*)' of '[^']*' object is unsafe")
_UNDEFINED_RE = re.compile(r"^'([^']*)' is undefined$")


def _template_line(exc: BaseException) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _describe(exc: BaseException) -> str:
    """An operator-facing sentence for a rendering failure: no traceback, no paths, no internals."""
    text = str(getattr(exc, "message", None) or exc)
    if isinstance(exc, SecurityError):
        match = _UNSAFE_RE.search(text)
        if match:
            return f"access to attribute '{match.group(1)}' is not allowed"
        return text.rstrip(".") or "this operation is not allowed"
    if isinstance(exc, jinja2.UndefinedError):
        match = _UNDEFINED_RE.match(text)
        if match:
            return f"unknown variable '{match.group(1)}'"
        return text.replace("'str object'", "text").rstrip(".")
    if isinstance(exc, jinja2.TemplateError):
        return text or "the template could not be rendered"
    if isinstance(exc, (RecursionError, MemoryError)):
        return "the template is too complex to render"
    if isinstance(exc, (TypeError, ValueError, ArithmeticError, LookupError)):
        return f"the template could not be rendered: {text}" if text else "the template could not be rendered"
    return f"the template could not be rendered ({type(exc).__name__})"


class _TooLong(Exception):
    pass


def _run(compiled: _Compiled, context: dict[str, str], field: str) -> str:
    """Render a checked template, bounded in length and time; every failure becomes a TemplateError."""
    if compiled.template is None:  # callers check first; kept as a wall
        issues = [TemplateIssue(field, message, line, limit=True) for message, line in compiled.limits]
        issues += [TemplateIssue(field, message, line) for message, line in compiled.problems]
        raise TemplateError(issues)
    parts: list[str] = []
    size = 0
    start_clock()
    try:
        for chunk in compiled.template.generate(context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise _TooLong
            parts.append(chunk)
    except _TooLong:
        issue = TemplateIssue(field, f"the rendered text is longer than {MAX_OUTPUT_CHARS} characters", limit=True)
        raise TemplateError(issue) from None
    except (LimitExceeded, RecursionError, MemoryError) as exc:
        raise TemplateError(TemplateIssue(field, _describe(exc), _template_line(exc), limit=True)) from None
    except Exception as exc:  # noqa: BLE001 - every failure is the operator's to see, as a sentence
        raise TemplateError(TemplateIssue(field, _describe(exc), _template_line(exc))) from None
    finally:
        stop_clock()
    return "".join(parts).strip()


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
        if not isinstance(text, str):
            raise TemplateError(TemplateIssue("yaml", "a template must be YAML text"))
        if len(text) > MAX_YAML_CHARS:
            raise TemplateError(
                TemplateIssue("yaml", f"the template is longer than {MAX_YAML_CHARS} characters", limit=True)
            )
        root, document_issues = _parse_yaml(text)
        if root is None:
            raise TemplateError(document_issues)
        try:
            data = root_data = _construct(root)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "a value could not be read"
            mark = getattr(exc, "problem_mark", None)
            raise TemplateError(TemplateIssue("yaml", problem, mark.line + 1 if mark else None)) from None
        if data is None or data == "":
            raise TemplateError(TemplateIssue("yaml", "the template is empty", 1))
        if not isinstance(data, dict):
            raise TemplateError(
                TemplateIssue("yaml", "a template is a mapping of keys (name:, title:, system_prompt: ...)", 1)
            )
        root_data = _variables_as_written(root, root_data)
        template, structure_issues, content_issues = cls._collect(root_data, check)
        issues = list(document_issues)
        issues += [_locate(root, issue, relative=False) for issue in structure_issues]
        issues += [_locate(root, issue, relative=True) for issue in content_issues]
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

        Two keys are written only when they differ from their defaults, so a stored version keeps
        following Snapdesk's list: ``escalation.sensitive_topics`` and ``stream``.
        """
        data = self.model_dump(mode="python")
        if data["escalation"]["sensitive_topics"] == list(DEFAULT_SENSITIVE_TOPICS):
            del data["escalation"]["sensitive_topics"]
        if data["stream"] is False:
            del data["stream"]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    def to_yaml(self) -> str:
        """YAML in the shipped files' layout (multi-line text as ``|`` blocks); :meth:`from_yaml` restores it."""
        return yaml.dump(
            self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False
        )

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

    def render_system_prompt(
        self,
        language: str,
        *,
        channel: str = "widget",
        user_name: str = "",
        now: datetime | date | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> str:
        """The system prompt for one turn. Raises :class:`TemplateError` (for the operator) on any problem."""
        lang = self.resolve_language(language)
        return self._render_field("system_prompt", self.system_prompt, lang, channel, user_name, now, overrides)

    def render_handover(
        self,
        language: str,
        overrides: Mapping[str, Any] | None = None,
        *,
        channel: str = "widget",
        user_name: str = "",
        now: datetime | date | None = None,
    ) -> str:
        """The message the end user sees when the thread goes to a person."""
        lang = self.resolve_language(language)
        if lang not in self.handover_messages:
            lang = next((code for code in (self.default_language, "en") if code in self.handover_messages), lang)
        return self._render_field("handover_messages", self.handover_messages, lang, channel, user_name, now, overrides)

    def context(
        self,
        language: str,
        *,
        channel: str = "widget",
        user_name: str = "",
        now: datetime | date | None = None,
        overrides: Mapping[str, Any] | None = None,
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
        )
        return values

    def _render_field(
        self,
        key: str,
        texts: dict[str, str],
        lang: str,
        channel: str,
        user_name: str,
        now: datetime | date | None,
        overrides: Mapping[str, Any] | None,
    ) -> str:
        field = f"{key}.{lang}"
        source = texts.get(lang)
        if source is None:
            raise TemplateError(TemplateIssue(field, "missing"), name=self.name)
        problems = _source_problems(source, self._known_names(), field)
        if problems:
            raise TemplateError(problems, name=self.name)
        context = self.context(lang, channel=channel, user_name=user_name, now=now, overrides=overrides)
        try:
            return _run(_compile(source), context, field)
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
                problems = _source_problems(source, known, field)
                issues += problems
                if problems or not source.strip():
                    continue
                try:  # a trial render with the defaults finds what only shows when it runs
                    text = _run(_compile(source), self.context(code, now=date(2000, 1, 1)), field)
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
                issues.append(TemplateIssue(field, f"this template has no variable '{key}'{_closest(key, known)}"))
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


# --------------------------------------------------------------------------------------------
# YAML: parsing with positions, and writing


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


class _AnchorRefused(yaml.MarkedYAMLError):
    pass


class _TemplateLoader(BoundedLoader):
    """Reads a template in one pass: depth bounded, anchors and aliases (``&a``, ``*a``) refused."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _AnchorRefused(None, None, "anchors and aliases (& and *) are not supported", event.start_mark)
        return super().compose_node(parent, index)


def _parse_yaml(text: str) -> tuple[yaml.Node | None, list[TemplateIssue]]:
    """The node tree (for positions) and the document's own problems: syntax, aliases, duplicate keys.

    Read with a :class:`BoundedLoader`, which stops at the first level of nesting too many.
    """
    try:
        root = yaml.compose(text, Loader=_TemplateLoader)
    except _AnchorRefused as exc:
        return None, [TemplateIssue("yaml", str(exc.problem), exc.problem_mark.line + 1)]
    except YamlTooBig as exc:
        mark = exc.problem_mark
        return None, [TemplateIssue("yaml", str(exc.problem), mark.line + 1 if mark else None,
                                    limit=True)]
    except RecursionError:  # a wall behind the depth limit
        return None, [TemplateIssue("yaml", "the document is nested too deeply to read", None, limit=True)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        return None, [TemplateIssue("yaml", f"YAML syntax error: {problem}", mark.line + 1 if mark else None)]
    except yaml.YAMLError as exc:
        return None, [TemplateIssue("yaml", f"YAML syntax error: {exc}")]
    if root is None:
        return None, [TemplateIssue("yaml", "the template is empty", 1)]
    issues: list[TemplateIssue] = []

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                child = f"{path}.{key}" if path else str(key)
                if key in seen:
                    issues.append(TemplateIssue(child, "this key appears twice; the second would silently win",
                                                key_node.start_mark.line + 1))
                seen.add(key)
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{path}[{index}]")

    walk(root, "")
    return root, issues


def _construct(root: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _variables_as_written(root: yaml.Node, data: dict[str, Any]) -> dict[str, Any]:
    """Variable values are text exactly as written: YAML would read `opens: 9:00` as 540, `v: 1.10` as 1.1."""
    if not isinstance(root, yaml.MappingNode) or not isinstance(data.get("variables"), dict):
        return data
    for key_node, value_node in root.value:
        if getattr(key_node, "value", None) == "variables" and isinstance(value_node, yaml.MappingNode):
            variables = dict(data["variables"])
            for name_node, item in value_node.value:
                name = getattr(name_node, "value", None)
                if (
                    isinstance(item, yaml.ScalarNode)
                    and item.style is None
                    and name in variables
                    and not isinstance(variables[name], str)
                    and variables[name] is not None
                ):
                    variables[name] = item.value
            return {**data, "variables": variables}
    return data


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _locate(root: yaml.Node, issue: TemplateIssue, *, relative: bool) -> TemplateIssue:
    """The issue with its line counted in the YAML document: the deepest node of its path that exists."""
    node: yaml.Node | None = root
    line = 1
    for match in _PATH_PART.finditer(issue.field):
        key, index = match.group(1), match.group(2)
        target = None
        if key is not None and isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                    line = key_node.start_mark.line + 1
                    target = value_node
                    break
        elif index is not None and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            target = node.value[int(index)]
            line = target.start_mark.line + 1
        if target is None:
            return replace(issue, line=line)
        node = target
    if relative and issue.line is not None and isinstance(node, yaml.ScalarNode):
        if node.style in ("|", ">"):
            line = node.start_mark.line + 1 + issue.line  # content starts below the "|" line
        else:
            line = node.start_mark.line + issue.line
    elif isinstance(node, yaml.ScalarNode):
        line = node.start_mark.line + 1
    return replace(issue, line=line)


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
