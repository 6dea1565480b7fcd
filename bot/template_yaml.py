"""A template's YAML document: read with every line kept, so an operator is told where a problem is.

Operators edit templates as YAML, and a problem found anywhere (in the document, the schema or a
Jinja text) is worth most with the line it stands on. So a document is read in two steps: composed
into nodes, which keep their positions, then built into plain data; a problem found in the data
is traced back through the nodes to its line. Reading is bounded while it happens
(:class:`bot.template_limits.BoundedLoader`), and what YAML would quietly make of a document (the
second of two equal keys winning, ``9:00`` read as 540, an anchor copying a subtree) is refused
or undone.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import yaml

from bot.template_issues import TemplateError, TemplateIssue
from bot.template_limits import MAX_YAML_CHARS, BoundedLoader, YamlTooBig


def read(text: str) -> tuple[yaml.Node, dict[str, Any], list[TemplateIssue]]:
    """The document's node tree (for :func:`locate`), its data, and the problems of the document itself.

    Raises :class:`TemplateError` when there is no mapping of keys to check at all.
    """
    if not isinstance(text, str):
        raise TemplateError(TemplateIssue("yaml", "a template must be YAML text"))
    if len(text) > MAX_YAML_CHARS:
        raise TemplateError(
            TemplateIssue("yaml", f"the template is longer than {MAX_YAML_CHARS} characters", limit=True)
        )
    root, issues = _parse_yaml(text)
    if root is None:
        raise TemplateError(issues)
    try:
        data = _construct(root)
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
    return root, _variables_as_written(root, data), issues


def dump(data: dict[str, Any]) -> str:
    """YAML in the shipped files' layout (multi-line text as ``|`` blocks); :func:`read` restores it."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=False)


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


def locate(root: yaml.Node, issue: TemplateIssue, *, relative: bool) -> TemplateIssue:
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


def set_confidence_threshold(text: str, threshold: float) -> str:
    """The document with `escalation.confidence_threshold` set, every other line as written
    (comments, order, wrapping): an operator's draft changes only where they asked."""
    value = f"{round(threshold, 4):g}"
    root, _, _ = read(text)
    escalation = _mapping_entry(root, "escalation")
    if escalation is None:
        return f"{text.rstrip()}\nescalation:\n  confidence_threshold: {value}\n"
    if not isinstance(escalation[1], yaml.MappingNode) or escalation[1].flow_style:
        raise TemplateError(TemplateIssue("escalation", "write escalation as a block of keys to change its threshold"))
    current = _mapping_entry(escalation[1], "confidence_threshold")
    if current is not None:
        node = current[1]
        return text[:node.start_mark.index] + value + text[node.end_mark.index:]
    first_key = escalation[1].value[0][0] if escalation[1].value else None
    if first_key is None:  # "escalation: {}" is flow style, so an empty block has no keys to follow
        raise TemplateError(TemplateIssue("escalation", "escalation has no keys"))
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    indent = " " * first_key.start_mark.column
    return f"{text[:line_start]}{indent}confidence_threshold: {value}\n{text[line_start:]}"


def _mapping_entry(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
