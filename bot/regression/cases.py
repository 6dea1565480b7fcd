"""What a regression case is, and where the cases of a template come from.

A case is one user message (text and real screenshots) with what should become of it. The
shipped templates' cases are files in prompts/cases/ (reviewed with the code, screenshots
rendered from the screenshot corpus); an operator's own cases are rows in the database, their
screenshots already redacted files in data/cases/. A template's set is both, shipped first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
import datetime as dt
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..escalation import Reason
from ..store import Store, iso

SHIPPED_DIRECTORY = Path(__file__).resolve().parents[2] / "prompts" / "cases"
CASES_DIR = "cases"  # under the data directory: operators' case screenshots
MAX_SCREENSHOTS = 4
MAX_CHECKS = 20
CASE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
Expect = Literal["answer", "handover"]


class CaseError(ValueError):
    """A case file or a new case that cannot be used; the message names what and where."""


class CaseSpec(BaseModel):
    """A case as written: in a shipped file, or sent by the console."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    text: str = Field(default="", max_length=4000)
    screenshots: list[str] = Field(default_factory=list, max_length=MAX_SCREENSHOTS)
    language: Literal["en", "zh"] = "en"
    channel: Literal["widget", "slack", "telegram"] = "widget"
    expect: Expect
    reason: Reason | None = None
    must_contain: list[str] = Field(default_factory=list, max_length=MAX_CHECKS)
    must_not_contain: list[str] = Field(default_factory=list, max_length=MAX_CHECKS)
    cite: list[str] = Field(default_factory=list, max_length=MAX_CHECKS)
    notes: str = Field(default="", max_length=2000)
    date: dt.date | None = None  # the day the conversation happens (the prompt's "today"); default: the file's, or today

    @field_validator("must_contain", "must_not_contain", "cite")
    @classmethod
    def _no_blank(cls, values: list[str]) -> list[str]:
        cleaned = [str(v).strip() for v in values]
        if any(not v or len(v) > 200 for v in cleaned):
            raise ValueError("each entry must be 1-200 characters")
        return cleaned


@dataclass(frozen=True)
class Case:
    key: str  # "shipped:<id>" or "case:<row id>": stable, names the case in runs and reports
    template: str
    text: str
    language: str
    channel: str
    expect: str
    reason: str | None = None
    must_contain: tuple[str, ...] = ()
    must_not_contain: tuple[str, ...] = ()
    cite: tuple[str, ...] = ()
    notes: str = ""
    date: dt.date | None = None
    screenshots: tuple[Path, ...] = ()
    source: str = "shipped"  # shipped | operator
    source_message_id: int | None = None
    created_by: str = ""
    created_at: str = ""
    row_id: int | None = None

    @property
    def label(self) -> str:
        return self.key.split(":", 1)[1] if self.source == "shipped" else f"#{self.row_id}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "label": self.label, "template": self.template, "text": self.text,
            "language": self.language, "channel": self.channel, "expect": self.expect, "reason": self.reason,
            "must_contain": list(self.must_contain), "must_not_contain": list(self.must_not_contain),
            "cite": list(self.cite), "notes": self.notes, "screenshots": len(self.screenshots),
            "source": self.source, "source_message_id": self.source_message_id, "created_by": self.created_by,
            "created_at": self.created_at, "id": self.row_id,
            "date": self.date.isoformat() if self.date else None,
        }


def _problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "case"
    return f"{where}: {first['msg']}"


def read_case_file(path: Path) -> list[Case]:
    """The cases of one shipped file; CaseError names the file and the case that is wrong."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CaseError(f"{path.name}: cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CaseError(f"{path.name}: expected 'template:' and a list under 'cases:'")
    if set(data) - {"template", "date", "cases"}:
        raise CaseError(f"{path.name}: unknown key {sorted(set(data) - {'template', 'date', 'cases'})[0]!r} "
                        "(a case file has template, date and cases)")
    template = str(data.get("template") or path.stem)
    try:
        day = CaseSpec.model_validate({"expect": "answer", "date": data.get("date")}).date
    except ValidationError:
        raise CaseError(f"{path.name}: 'date' must be a date such as 2024-03-06") from None
    screenshots_dir = path.parent / "screenshots"
    cases, seen = [], set()
    for index, raw in enumerate(data["cases"], start=1):
        try:
            spec = CaseSpec.model_validate(raw)
        except ValidationError as exc:
            raise CaseError(f"{path.name}, case {index}: {_problem(exc)}") from None
        if not CASE_ID.match(spec.id) or spec.id in seen:
            raise CaseError(f"{path.name}, case {index}: 'id' must be unique lowercase letters, digits and hyphens")
        seen.add(spec.id)
        files = tuple(screenshots_dir / name for name in spec.screenshots)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CaseError(f"{path.name}, case {spec.id}: no screenshot {missing[0]} in {screenshots_dir}")
        cases.append(_case(f"shipped:{spec.id}", template, spec, files, source="shipped", date=spec.date or day))
    return cases


def _case(key: str, template: str, spec: CaseSpec, files: tuple[Path, ...], **extra: Any) -> Case:
    extra.setdefault("date", spec.date)
    return Case(key=key, template=template, text=spec.text, language=spec.language, channel=spec.channel,
                expect=spec.expect, reason=spec.reason.value if spec.reason else None,
                must_contain=tuple(spec.must_contain), must_not_contain=tuple(spec.must_not_contain),
                cite=tuple(spec.cite), notes=spec.notes, screenshots=files, **extra)


def shipped_cases(template: str, directory: Path = SHIPPED_DIRECTORY) -> list[Case]:
    path = directory / f"{template}.yaml"
    return read_case_file(path) if path.is_file() else []


# Operators' own cases (database thread) -------------------------------------------------------
def _cases_dir(store: Store) -> Path:
    return store.data_dir / CASES_DIR


def save_screenshot(store: Store, data: bytes) -> str:
    """Keep one (already redacted) screenshot for cases; its SHA-256, which names the file."""
    digest = hashlib.sha256(data).hexdigest()
    directory = _cases_dir(store)
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{digest}.png"
    if not path.exists():
        temporary = directory / f".{digest}.{os.getpid()}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, path)
    return digest


def add_case(store: Store, template: str, spec: CaseSpec, screenshots: list[str], author: str,
             source_message_id: int | None = None) -> int:
    """Store an operator's case (`screenshots`: digests from `save_screenshot`); its row id."""
    with store.transaction():
        row_id = store.db["eval_cases"].insert({
            "template": template, "text": spec.text, "language": spec.language, "channel": spec.channel,
            "expect": spec.expect, "expect_reason": spec.reason.value if spec.reason else None,
            "must_contain": json.dumps(spec.must_contain, ensure_ascii=False),
            "must_not_contain": json.dumps(spec.must_not_contain, ensure_ascii=False),
            "cite": json.dumps(spec.cite, ensure_ascii=False), "notes": spec.notes,
            "screenshots": json.dumps(screenshots), "source_message_id": source_message_id,
            "created_by": author, "created_at": iso(),
        }).last_pk
        store.audit(author, "case_add", f"template:{template}", case=row_id, message=source_message_id)
    return row_id


def remove_case(store: Store, row_id: int, author: str) -> Case | None:
    with store.transaction():
        found = operator_case(store, row_id)
        if found is None:
            return None
        store.db.execute("delete from eval_cases where id = ?", [row_id])
        store.audit(author, "case_remove", f"template:{found.template}", case=row_id)
    return found


def _from_row(store: Store, row: dict) -> Case:
    directory = _cases_dir(store)
    return Case(
        key=f"case:{row['id']}", template=row["template"], text=row["text"] or "", language=row["language"] or "en",
        channel=row["channel"] or "widget", expect=row["expect"], reason=row["expect_reason"],
        must_contain=tuple(json.loads(row["must_contain"] or "[]")),
        must_not_contain=tuple(json.loads(row["must_not_contain"] or "[]")),
        cite=tuple(json.loads(row["cite"] or "[]")), notes=row["notes"] or "",
        screenshots=tuple(directory / f"{digest}.png" for digest in json.loads(row["screenshots"] or "[]")),
        source="operator", source_message_id=row["source_message_id"], created_by=row["created_by"] or "",
        created_at=row["created_at"], row_id=row["id"],
    )


def operator_case(store: Store, row_id: int) -> Case | None:
    rows = list(store.db["eval_cases"].rows_where("id = ?", [row_id]))
    return _from_row(store, rows[0]) if rows else None


def operator_cases(store: Store, template: str) -> list[Case]:
    return [_from_row(store, row) for row in store.db["eval_cases"].rows_where("template = ?", [template],
                                                                                order_by="id")]


def regression_set(store: Store, template: str, directory: Path = SHIPPED_DIRECTORY) -> list[Case]:
    """A template's whole set: its shipped cases, then the operators' (CaseError: a broken file)."""
    return [*shipped_cases(template, directory), *operator_cases(store, template)]
