"""A regression run as a JUnit XML report, the one test format every CI system reads.

GitLab, Jenkins and GitHub's report actions show a JUnit file as a test run: one suite per
template version, one test per case, a failure with the case's failures as its message, the
reply under system-out. Replies are the model's text, noise on a small model, and XML 1.0
forbids most control characters even escaped, so those are dropped before writing
(ElementTree escapes the rest).
"""

from __future__ import annotations

import os
import re
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence
from xml.etree import ElementTree as ET

from .cases import Case
from .checks import Verdict
from .turn import TurnResult

_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
PROPERTIES = ("pass_rate", "handover_precision", "handover_recall", "answer_check_rate", "confidence_auroc",
              "engine_errors")


def xml_text(value: Any) -> str:
    return _NOT_XML.sub("", str(value))


def _attributes(**values: Any) -> dict[str, str]:
    return {k: xml_text(v) for k, v in values.items()}


def _element(parent: ET.Element, tag: str, text: str | None = None, **attributes: Any) -> ET.Element:
    element = ET.SubElement(parent, tag, _attributes(**attributes))
    if text is not None:
        element.text = xml_text(text)
    return element


def _failure_text(result: TurnResult, verdict: Verdict) -> str:
    lines = list(verdict.failures)
    lines.append(f"outcome: {result.outcome}" + (f" ({result.reason}: {result.detail})" if result.reason else ""))
    if result.confidence is not None:
        lines.append(f"confidence: {result.confidence:.4f}")
    return "\n".join(lines)


def report(suite: str, template: str, rows: Sequence[tuple[Case, TurnResult, Verdict]], figures: Mapping[str, Any],
           *, time_s: float, started: datetime, properties: Mapping[str, Any] | None = None) -> ET.ElementTree:
    """`rows` in the set's order; `figures`: the run's summary (report.summary); `started` in UTC."""
    counts = {"tests": len(rows), "failures": sum(1 for _, _, v in rows if not v.passed), "errors": 0,
              "time": f"{time_s:.3f}"}
    root = ET.Element("testsuites", _attributes(name="snapdesk eval", **counts))
    suite_element = _element(root, "testsuite", name=suite, timestamp=started.strftime("%Y-%m-%dT%H:%M:%S"),
                             hostname=socket.gethostname(), skipped=0, **counts)
    listed = _element(suite_element, "properties")
    shown = [("template", template), *(properties or {}).items(), *((k, figures.get(k)) for k in PROPERTIES)]
    for name, value in shown:
        if value is not None:
            _element(listed, "property", name=name, value=value)
    for case, result, verdict in rows:
        test = _element(suite_element, "testcase", classname=f"snapdesk.{template}", name=case.label,
                        time=f"{result.latency_s or 0:.3f}")
        if not verdict.passed:
            kind = "engine_error" if result.error else "regression"
            _element(test, "failure", _failure_text(result, verdict), message="; ".join(verdict.failures), type=kind)
        if result.reply:
            _element(test, "system-out", result.reply)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write(tree: ET.ElementTree, path: Path) -> None:
    """Whole or not at all: a CI job reading the file never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tree.write(temporary, encoding="utf-8", xml_declaration=True)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
