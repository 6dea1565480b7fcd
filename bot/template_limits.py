"""What reading and rendering one template may cost, enforced while the work is done.

Templates are written by operators and a draft is parsed and rendered on the server, so a few
kilobytes of nested brackets, or a ``~`` joining a long variable thousands of times, must cost
milliseconds and a bounded amount of memory and end in a sentence saying which limit was hit.
Checking a result afterwards is too late: the recursion has already overflowed, the gigabyte
string already exists. So every bound here is checked before the costly step:

* the YAML reader refuses a document nested too deeply, or holding too many values, as it reads
  it (PyYAML's scanner gets quadratic with flow nesting, its composer recurses once per level,
  and pure-Python reading costs some 25 microseconds a value);
* a Jinja source is scanned token by token for nesting before the recursive parser sees it, and
  the parsed tree is measured before it is compiled;
* each value a template builds (``~``, ``+``, ``*``, a filter's result, the text it outputs) is
  measured before it is made, and only plain data (text, numbers, true/false, none, and lists or
  mappings of them) may become text: nothing else's representation (a method, a memory address)
  ever reaches a prompt;
* rendering has a time budget, checked at each of those steps.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import yaml
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.runtime import Undefined

MAX_YAML_CHARS = 128 * 1024  # ten times a shipped template
MAX_YAML_DEPTH = 24  # mappings and lists inside one another; a template needs four
MAX_YAML_NODES = 5_000  # values, keys included; 200 examples with every key take about 2,300
MAX_SOURCE_CHARS = 50_000  # one system prompt or hand-over message, as written
MAX_BRACKET_DEPTH = 20  # ( [ { inside one another in one expression
MAX_BLOCK_DEPTH = 20  # {% if %} inside {% if %}
MAX_OPERATOR_RUN = 20  # `not not not ...`, `- - - x`
MAX_EXPRESSION_DEPTH = 40  # operators, filters and brackets inside one another, as parsed
MAX_NUMBER_DIGITS = 100  # a number written in a template (Python refuses to read one of 4,300)
MAX_OUTPUT_CHARS = 100_000  # one rendered text
MAX_VALUE_CHARS = MAX_OUTPUT_CHARS  # any text or list a template builds on the way
MAX_REPEAT_CHARS = 10_000  # "-" * 40 is fine, "a" * 10**9 is not
MAX_RENDER_SECONDS = 0.5  # one text; the shipped templates take about a millisecond
MAX_EXAMPLES = 200

_OPENING_BLOCKS = frozenset({"if", "for", "macro", "call", "filter", "block", "with", "autoescape", "trans"})
_OPERAND_TOKENS = frozenset({"name", "string", "integer", "float"})


class LimitExceeded(SecurityError):
    """A template asked for more than a limit allows; the message names the limit."""


# --------------------------------------------------------------------------------------------
# YAML


class YamlTooBig(yaml.MarkedYAMLError):
    """``problem`` says which limit, ``problem_mark`` where."""


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing nesting deeper than MAX_YAML_DEPTH and more than MAX_YAML_NODES
    values while it scans and composes (the scanner reads only as far as the composer asks)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._compose_depth = 0
        self._nodes = 0

    def _too_deep(self) -> YamlTooBig:
        return YamlTooBig(
            None, None,
            f"the document is nested more than {MAX_YAML_DEPTH} levels deep (lists and mappings inside one another)",
            self.get_mark(),
        )

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        if self.flow_level >= MAX_YAML_DEPTH:
            raise self._too_deep()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_YAML_DEPTH:
            raise self._too_deep()
        return super().add_indent(column)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._compose_depth += 1
        self._nodes += 1
        try:
            if self._compose_depth > MAX_YAML_DEPTH + 1:
                raise self._too_deep()
            if self._nodes > MAX_YAML_NODES:
                raise YamlTooBig(None, None, f"the document holds more than {MAX_YAML_NODES} values", self.get_mark())
            return super().compose_node(parent, index)
        finally:
            self._compose_depth -= 1


# --------------------------------------------------------------------------------------------
# Jinja sources and trees


def token_problem(lexed: Any) -> tuple[str, int | None] | None:
    """The first limit a Jinja source passes, from its raw tokens; None when it passes none.

    Jinja's parser recurses once per bracket, unary operator and block, so this runs before it.
    `lexed` is ``environment.lex(source)``; a lexing error is left for the parser to report.
    """
    brackets = blocks = run = 0
    expecting_tag_name = False
    try:
        for line, kind, value in lexed:
            if kind == "whitespace":
                continue
            if kind == "block_begin":
                expecting_tag_name = True
                run = 0
                continue
            if expecting_tag_name:
                expecting_tag_name = False
                if kind == "name" and value in _OPENING_BLOCKS:
                    blocks += 1
                    if blocks > MAX_BLOCK_DEPTH:
                        return f"blocks nested more than {MAX_BLOCK_DEPTH} deep ({{% {value} %}} inside another)", line
                elif kind == "name" and value.startswith("end"):
                    blocks = max(0, blocks - 1)
                continue
            if kind == "integer" and len(value) > MAX_NUMBER_DIGITS:
                return f"numbers longer than {MAX_NUMBER_DIGITS} digits are not allowed", line
            if kind in ("variable_begin", "variable_end", "block_end", "data"):
                brackets = run = 0
            elif kind == "operator" and value in "([{":
                brackets += 1
                run = 0
                if brackets > MAX_BRACKET_DEPTH:
                    return f"brackets nested more than {MAX_BRACKET_DEPTH} deep", line
            elif kind == "operator" and value in ")]}":
                brackets = max(0, brackets - 1)
                run = 0
            elif kind == "operator" and value not in ",:|.":
                run += 1
            elif kind == "name" and value == "not":
                run += 1
            elif kind in _OPERAND_TOKENS or kind == "operator":
                run = 0
            if run > MAX_OPERATOR_RUN:
                return f"more than {MAX_OPERATOR_RUN} operators in a row", line
    except TemplateSyntaxError:
        return None
    return None


def tree_problem(tree: nodes.Template) -> tuple[str, int | None] | None:
    """The first expression nested deeper than MAX_EXPRESSION_DEPTH, found without recursing.

    Chains such as ``a + b + c ...`` or ``x|trim|lower ...`` parse without recursion but build a
    tree as deep as they are long, and compiling that tree recurses.
    """
    stack: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, nodes.Stmt) or isinstance(node, nodes.Template):
            depth = 0
        else:
            depth += 1
            if depth > MAX_EXPRESSION_DEPTH:
                return (
                    f"an expression is too complex: more than {MAX_EXPRESSION_DEPTH} operators, filters or "
                    "brackets inside one another",
                    getattr(node, "lineno", None),
                )
        stack.extend((child, depth) for child in node.iter_child_nodes())
    return None


# --------------------------------------------------------------------------------------------
# Values while rendering

_PLAIN = (str, int, float, type(None))  # bool is an int
_clock = threading.local()


def start_clock() -> None:
    # The render's own CPU time, not the wall clock: a busy machine must not fail a template
    # that renders in a millisecond, while a bomb still spends its budget and stops.
    _clock.deadline = time.thread_time() + MAX_RENDER_SECONDS


def stop_clock() -> None:
    _clock.deadline = None


def tick() -> None:
    """Called at each step of a render: past the time budget, the render stops."""
    deadline = getattr(_clock, "deadline", None)
    if deadline is not None and time.thread_time() > deadline:
        raise LimitExceeded(f"rendering took longer than {MAX_RENDER_SECONDS:g} s")


def kind_of(value: Any) -> str:
    """What a value is, for an operator, without its representation (which may hold an address)."""
    if isinstance(value, type):
        return "a class"
    if callable(value):
        return "a function or method"
    return f"a '{type(value).__name__}' object"


def not_plain(value: Any) -> SecurityError:
    return SecurityError(
        f"this value is {kind_of(value)}; a template may only show text, numbers, true/false and lists of them"
    )


def is_data(value: Any) -> bool:
    """One step of plainness: what a lookup may hand to a template (containers are checked when shown)."""
    return isinstance(value, (*_PLAIN, list, tuple, dict, Undefined))


def text_size(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` makes, counted without making it.

    Stops counting once past `limit` (the caller refuses then). Raises for anything but plain
    data, and lets an undefined value raise its own error.
    """
    if isinstance(value, Undefined):
        return len(str(value))  # StrictUndefined raises "'x' is undefined" here
    if isinstance(value, str):
        return len(value)
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 4  # quotes, a comma and a space in a list's text
        elif isinstance(item, bool) or item is None:
            total += 6
        elif isinstance(item, int):
            total += item.bit_length() * 30103 // 100000 + 3
        elif isinstance(item, float):
            total += 26
        elif isinstance(item, (list, tuple)):
            total += 2
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2
            for key, entry in item.items():
                stack.append(key)
                stack.append(entry)
        elif isinstance(item, Undefined):
            str(item)
            total += 9
        else:
            raise not_plain(item)
        if total > limit:
            break
    return total


def check_value(value: Any, limit: int, message: str) -> Any:
    """`value`, if it is plain data that makes at most `limit` characters of text; else `message`."""
    if text_size(value, limit) > limit:
        raise LimitExceeded(message)
    return value
