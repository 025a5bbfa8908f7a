"""Watches: named patterns over lives ("is ntpd running?"), kept current from the journal.

A watch engine is one journal subscriber. It applies each born/exec/died event to every
watch's set of matching lives and journals a `watch` event whenever a watch's membership
changes. Applying an event is idempotent (a set keyed by life), so a full re-evaluation
against the registry (after a snapshot, a resync or a subscriber reset) may overlap with
events still queued without double counting. No polling: the engine sleeps until the
journal offers it something.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.journal import Event, Subscriber
from app.life import LifeView, _iso
from app.registry import Registry

log = logging.getLogger(__name__)

RUNNING, NOT_RUNNING = "running", "not running"
# Events that can change a watch. `gap` is always followed by `resync`, which re-evaluates.
_RELEVANT = frozenset({"born", "exec", "died", "snapshot", "resync", "reset"})
_FULL = frozenset({"snapshot", "resync", "reset"})
QUEUE = 1 << 16  # the engine is fast; a large queue keeps it on the incremental path


class WatchSpec(BaseModel):
    """What a watch matches. Every given criterion must hold; at least one is required.
    `exe`, `comm` and `parent` are shell globs (fnmatch); `argv` is a regular expression
    searched in the arguments joined by single spaces."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exe: str | None = Field(None, description="glob on the executable path, e.g. /usr/sbin/ntpd")
    comm: str | None = Field(None, description="glob on the command name (15 chars max)")
    argv: str | None = Field(None, description="regex searched in ' '.join(argv)")
    uid: int | None = Field(None, ge=0, description="real uid")
    parent: str | None = Field(None, description="glob on the parent's comm or exe")
    min: int = Field(1, ge=0, description="fewest matching lives that are healthy")
    max: int | None = Field(None, ge=0, description="most matching lives that are healthy")
    canary: bool = Field(False, description="also match lifewatch's own canary lives")

    @field_validator("argv")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"argv is not a valid regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _something(self) -> WatchSpec:
        if all(getattr(self, k) is None for k in ("exe", "comm", "argv", "uid", "parent")):
            raise ValueError("a watch needs at least one of exe, comm, argv, uid, parent")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


ParentOf = Callable[[LifeView], LifeView | None]


class Matcher:
    """A compiled WatchSpec: one cheap test per life."""

    __slots__ = ("_argv", "spec")

    def __init__(self, spec: WatchSpec) -> None:
        self.spec = spec
        self._argv = re.compile(spec.argv) if spec.argv is not None else None

    def __call__(self, life: LifeView, parent_of: ParentOf) -> bool:
        s = self.spec
        if life.died_at is not None or (life.canary and not s.canary):
            return False
        if s.uid is not None and life.uid != s.uid:
            return False
        if s.comm is not None and not _glob(life.comm, s.comm):
            return False
        if s.exe is not None and not _glob(life.exe, s.exe):
            return False
        if self._argv is not None and not self._argv.search(" ".join(life.argv)):
            return False
        if s.parent is not None:
            parent = parent_of(life)
            if parent is None or not (
                _glob(parent.comm, s.parent) or _glob(parent.exe, s.parent)
            ):
                return False
        return True


def _glob(value: str | None, pattern: str) -> bool:
    return value is not None and fnmatch.fnmatchcase(value, pattern)


Key = tuple[int, int]  # (pid, start_ticks)


class Watch:
    """One watch's current state: its matching lives and since when it runs or not."""

    def __init__(self, name: str, spec: WatchSpec, now: float) -> None:
        self.name = name
        self.spec = spec
        self.match = Matcher(spec)
        self.lives: dict[Key, LifeView] = {}
        self.since = now  # when `state` last changed (or the watch was defined)
        self.changed_at = now  # when membership last changed

    @property
    def count(self) -> int:
        return len(self.lives)

    @property
    def state(self) -> str:
        return RUNNING if self.lives else NOT_RUNNING

    @property
    def ok(self) -> bool:
        n = len(self.lives)
        return n >= self.spec.min and (self.spec.max is None or n <= self.spec.max)

    def summary(self) -> dict[str, Any]:
        """The fields of a `watch` event (flat, next to cursor/type/at)."""
        return {
            "watch": self.name,
            "state": self.state,
            "ok": self.ok,
            "count": self.count,
            "min": self.spec.min,
            "max": self.spec.max,
            "since": _iso(self.since),
        }


class WatchEngine:
    """Keeps every watch current. Create it with the registry, `start()` it inside the loop."""

    def __init__(
        self,
        registry: Registry,
        specs: Mapping[str, WatchSpec] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._clock = clock
        self.watches: dict[str, Watch] = {}
        self.events = 0  # journal events applied
        self.full_evaluations = 0
        self._sub: Subscriber | None = None
        self._task: asyncio.Task[None] | None = None
        # Configured watches are defined at start(), against the snapshot, so they begin
        # in their true state instead of flapping from "not running".
        self._configured = dict(specs or {})

    # -- definitions (config file and PUT/DELETE /v1/watches/{name}) -------------------
    def define(self, name: str, spec: WatchSpec) -> tuple[Watch, bool]:
        """Create or replace a watch; (watch, created). Re-putting the same spec is a no-op."""
        old = self.watches.get(name)
        if old is not None and old.spec == spec:
            return old, False
        watch = Watch(name, spec, self._clock())
        self.watches[name] = watch
        for life in self.registry.alive.values():
            view = life.snapshot()
            if watch.match(view, self._parent_of):
                watch.lives[(view.pid, view.start_ticks)] = view
        self._emit(watch, "defined" if old is None else "redefined", None, None)
        return watch, old is None

    def remove(self, name: str) -> Watch | None:
        watch = self.watches.pop(name, None)
        if watch is not None:
            self.registry.journal.append(
                "watch", None, {**watch.summary(), "change": "removed"}, 0, None
            )
        return watch

    def life_ids(self, watch: Watch) -> list[dict[str, Any]]:
        """The watch's lives in brief, oldest first (for the API and the dashboard)."""
        host, clock = self.registry.node.hostname, self.registry.node.clock
        out = []
        for v in sorted(watch.lives.values(), key=lambda v: v.start_ticks):
            start = clock.date_of(v.start_ticks)
            out.append(
                {"id": f"{host}/{v.pid}/{start}", "pid": v.pid, "start": start,
                 "comm": v.comm, "exe": v.exe}
            )  # fmt: skip
        return out

    def view(self, watch: Watch) -> dict[str, Any]:
        """A watch as the API shows it (openapi.yaml `Watch`)."""
        return {
            "name": watch.name,
            "spec": watch.spec.model_dump(exclude_none=True),
            **{k: v for k, v in watch.summary().items() if k != "watch"},
            "changed_at": _iso(watch.changed_at),
            "lives": self.life_ids(watch),
        }

    @property
    def subscribed(self) -> int:
        """Journal subscribers the engine holds (1 while running)."""
        return 0 if self._sub is None else 1

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe and re-evaluate in one synchronous step: no event falls between."""
        self._sub = self.registry.journal.subscribe(lambda e: e.type in _RELEVANT, QUEUE)
        for name, spec in self._configured.items():
            self.define(name, spec)
        self.reevaluate()
        self._task = asyncio.create_task(self._run(self._sub), name="watch-engine")

    async def stop(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, sub: Subscriber) -> None:
        while True:
            batch = await sub.next_batch()
            if not batch:
                return
            try:
                self.apply(batch)
            except Exception:  # a bug here must not silence the watches for good
                log.exception("watch engine: re-evaluating after an error")
                self.reevaluate()

    def apply(self, events: Iterable[Event]) -> None:
        """Apply journal events in order (synchronous; the task calls it per batch)."""
        for ev in events:
            self.events += 1
            if not self.watches:
                continue
            life = ev.life
            if ev.type in _FULL:
                self.reevaluate(ev.at)
            elif life is None:
                continue
            elif ev.type == "died":
                self._leave(life, ev.at)
            else:  # born, exec
                self._consider(life, ev.at)

    def reevaluate(self, at: float | None = None) -> None:
        """Compare every watch with the registry's live processes now."""
        self.full_evaluations += 1
        views = [life.snapshot() for life in self.registry.alive.values()]
        for watch in self.watches.values():
            now = {(v.pid, v.start_ticks): v for v in views if watch.match(v, self._parent_of)}
            for key in [k for k in watch.lives if k not in now]:
                self._set(watch, key, None, at, "left")
            for key, v in now.items():
                if key not in watch.lives:
                    self._set(watch, key, v, at, "joined")
                else:
                    watch.lives[key] = v

    def _consider(self, life: LifeView, at: float) -> None:
        key = (life.pid, life.start_ticks)
        for watch in self.watches.values():
            if watch.match(life, self._parent_of):
                if key in watch.lives:
                    watch.lives[key] = life  # exec within the pattern: refresh, no change
                else:
                    self._set(watch, key, life, at, "joined")
            elif key in watch.lives:
                self._set(watch, key, None, at, "left")  # exec'd into something else

    def _leave(self, life: LifeView, at: float) -> None:
        key = (life.pid, life.start_ticks)
        for watch in self.watches.values():
            if key in watch.lives:
                self._set(watch, key, None, at, "left", life)

    def _set(
        self,
        watch: Watch,
        key: Key,
        life: LifeView | None,
        at: float | None,
        change: str,
        why: LifeView | None = None,
    ) -> None:
        before = watch.state
        old = watch.lives.pop(key, None)
        if life is not None:
            watch.lives[key] = life
        when = self._clock() if at is None else at
        watch.changed_at = when
        if watch.state != before:
            watch.since = when
        self._emit(watch, change, life or why or old, at)

    def _emit(self, watch: Watch, change: str, life: LifeView | None, at: float | None) -> None:
        self.registry.journal.append("watch", life, {**watch.summary(), "change": change}, 0, at)

    def _parent_of(self, life: LifeView) -> LifeView | None:
        reg = self.registry
        if life.parent_ticks is not None:
            parent = reg.find(life.ppid, life.parent_ticks)
        else:
            parent = reg.alive.get(life.ppid)
        return None if parent is None else parent.snapshot()
