"""The sandbox every template renders in, and the checks a template passes before it runs.

Templates are data written by operators, so rendering is sandboxed:

* one shared :class:`jinja2.sandbox.SandboxedEnvironment`, ``StrictUndefined`` (an unknown variable is an
  error, never silently empty), autoescape off (a prompt is not HTML);
* no globals (``range``, ``lipsum``, ``cycler``...), a short list of text filters, and no attribute
  access, function calls, loops, macros, ``set`` or includes: a prompt needs variables, filters and
  ``{% if %}``, nothing more. Every template is checked statically before it is compiled, so a problem
  is reported with its line before anything runs; the sandbox itself stays as a second wall;
* only plain data (text, numbers, true/false, lists of them) can become text, and what rendering
  may cost is bounded while the work is done (:mod:`bot.template_limits`): Jinja nesting, source
  and output sizes, every value built with ``~``, ``+``, ``*`` or a filter, and the time one render
  takes;
* every failure becomes a :class:`TemplateError` with a message fit for an operator, never a
  traceback; one caused by a limit is marked as such (``TemplateIssue.limit``).

Compiled templates are cached by source text, so rendering on every chat turn is cheap.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS as _JINJA_FILTERS
from jinja2.runtime import Undefined
from jinja2.sandbox import SandboxedEnvironment

from bot.template_issues import TemplateError, TemplateIssue, did_you_mean
from bot.template_limits import (
    MAX_OUTPUT_CHARS,
    MAX_REPEAT_CHARS,
    MAX_SOURCE_CHARS,
    MAX_VALUE_CHARS,
    LimitExceeded,
    check_value,
    is_data,
    not_plain,
    start_clock,
    stop_clock,
    text_size,
    tick,
    token_problem,
    tree_problem,
)


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
class Compiled:
    """One source text, checked and compiled once for every turn that renders it.

    ``template`` is None when a problem keeps it from running. Each name the source reads stays
    in ``problems`` as ``"\\0name"``, to be held by :func:`source_problems` against the names the
    template declares: the cache is by text, and two templates may hold the same text.
    """

    template: jinja2.Template | None
    problems: tuple[tuple[str, int | None], ...]  # (message, line within the source)
    limits: tuple[tuple[str, int | None], ...] = ()  # the same, for limits hit (too long, too deep)


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
def compile_source(source: str) -> Compiled:
    """Parse, check and compile one source text; cached, since the same prompt renders every turn.

    Size and nesting are checked before the parser (which recurses once per bracket) and before
    the compiler (which recurses once per level of the tree) get to see the text.
    """
    if len(source) > MAX_SOURCE_CHARS:
        return Compiled(None, (), ((f"the text is longer than {MAX_SOURCE_CHARS} characters", None),))
    too_deep = token_problem(ENVIRONMENT.lex(source))
    if too_deep is not None:
        return Compiled(None, (), (too_deep,))
    try:
        tree = ENVIRONMENT.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return Compiled(None, ((f"syntax error: {exc.message or 'invalid syntax'}", exc.lineno),))
    except RecursionError:  # a wall behind the nesting check
        return Compiled(None, (), (("the text is nested too deeply to read", None),))
    except ValueError as exc:  # a wall behind the length check of numbers
        return Compiled(None, ((f"syntax error: {exc}".split(";")[0], None),))
    too_deep = tree_problem(tree)
    if too_deep is not None:
        return Compiled(None, (), (too_deep,))
    problems = _check_tree(tree)
    if any(not message.startswith("\0") for message, _ in problems):
        return Compiled(None, tuple(problems))
    try:
        compiled = ENVIRONMENT.from_string(tree)
    except jinja2.TemplateError as exc:  # an unknown test (`is foo`) and the like
        message = (exc.message or "invalid template").rstrip(".")
        return Compiled(None, ((f"syntax error: {message}", getattr(exc, "lineno", None)),))
    except RecursionError:
        return Compiled(None, (), (("the text is nested too deeply to compile", None),))
    return Compiled(compiled, tuple(problems))


def source_problems(source: str, known: tuple[str, ...], field: str) -> list[TemplateIssue]:
    """Every static problem of `source`, unknown variables included, given the names it may use."""
    compiled = compile_source(source)
    if compiled.limits:
        return [TemplateIssue(field, message, line, limit=True) for message, line in compiled.limits]
    found: list[tuple[str, int | None]] = []
    seen: set[tuple[str, int | None]] = set()
    for message, line in compiled.problems:
        if message.startswith("\0"):
            name = message[1:]
            if name in known:
                continue
            message = f"unknown variable '{name}'{did_you_mean(name, known)}; declare it under 'variables'"
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


def render(compiled: Compiled, context: dict[str, str], field: str) -> str:
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
