"""Bounded path and query parameters, declared once and used by every route.

SQLite integers are 64-bit: an id beyond that does not merely match nothing, it makes the
driver raise OverflowError, a 500. So ids are bounded in the schema itself, which answers
anything outside with 422 before a route runs and tells API clients (and fuzzers) the range.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

INT64_MAX = 2**63 - 1

RowId = Annotated[int, Path(ge=1, le=INT64_MAX, description="a row id (a positive 64-bit integer)")]
"""A database row id in the path (conversations, messages, versions)."""

RowIdField = Annotated[int, Field(ge=1, le=INT64_MAX)]
"""A database row id in a JSON body."""

Days = Annotated[int, Query(ge=1, le=365, description="how many days back, 1 to 365")]
"""A reporting window in days."""

SearchText = Annotated[str, Query(max_length=200, description="words to search for (at most 200 characters)")]
"""Free text of a search box."""

FilterName = Annotated[str | None, Query(max_length=64)]
"""A short filter value (a channel, a reason)."""

Name = Annotated[str, Path(min_length=1, max_length=64, description="a user or template name (at most 64 characters)")]
"""A user's login or a template's name in the path: both are at most 64 characters."""
