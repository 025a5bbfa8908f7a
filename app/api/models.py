"""Request models: query strings and bodies are validated here; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EVENT_TYPES = (
    "born", "exec", "died", "gap", "resync", "snapshot", "source", "reset", "watch", "clock",
    "node",
)  # fmt: skip


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=4096)


def _types(v: object) -> object:
    if isinstance(v, str):
        # Exactly a comma list of names (openapi.yaml's pattern): no blanks, no empty entries.
        names = tuple(v.split(","))
        bad = [t for t in names if t not in EVENT_TYPES]
        if bad:
            raise ValueError(f"unknown event type(s) {bad}; known: {', '.join(EVENT_TYPES)}")
        return names
    return v


def _when(v: object) -> object:
    """A moment as epoch seconds or an ISO 8601 date (with a zone, or Z)."""
    if not isinstance(v, str):
        return v
    try:
        return float(v) if v.replace(".", "", 1).isdigit() else _date(v)
    except ValueError:
        raise ValueError("a date (2026-01-02T03:04:05Z) or epoch seconds") from None


def _date(text: str) -> float:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.timestamp()


class LivesQuery(Query):
    state: str | None = Field(None, pattern="^(alive|dead)$")
    comm: str | None = None
    exe: str | None = None
    ppid: int | None = Field(None, ge=0)
    canary: bool | None = None
    limit: int = Field(100, ge=1, le=10_000)
    after: str | None = Field(None, pattern=r"^h?\d{1,20}\.\d{1,20}$")
    # Death time bounds (ISO 8601 date or epoch seconds): the whole retained history
    # (app/api/history.py).
    since: float | None = None
    until: float | None = None

    _check_since = field_validator("since", "until", mode="before")(_when)


class EventsQuery(Query):
    after: int = Field(0, ge=0)
    limit: int = Field(1000, ge=1, le=10_000)
    types: tuple[str, ...] | None = None

    _check_types = field_validator("types", mode="before")(_types)


class StreamQuery(Query):
    after: int | None = Field(None, ge=0)
    types: tuple[str, ...] | None = None
    pid: int | None = Field(None, ge=1)
    comm: str | None = None
    exe: str | None = None
    life: str | None = Field(None, max_length=400)  # host/pid/start, as POST /v1/follow
    partners_of: str | None = Field(None, max_length=400)
    canary: bool | None = None
    # scope=cluster: every node's events, each with its `host` (docs/cluster.md)
    scope: Literal["node", "cluster"] = "node"
    host: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,253}$")
    # scope=cluster: resume from each host's origin_cursor, on any node (docs/cluster.md)
    cluster_cursor: str | None = Field(None, max_length=65536)

    _check_types = field_validator("types", mode="before")(_types)


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lives: list[str] = Field(..., min_length=1)
