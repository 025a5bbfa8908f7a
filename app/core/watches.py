"""Watches: named patterns over lives ("is ntpd running?"), kept current from the journal.

A watch engine is one journal subscriber (only while some watch exists). It applies each
born/exec/died event to every watch's set of matching lives and journals a `watch` event
whenever a watch's membership changes. Applying an event is idempotent (a set keyed by
life), so a full re-evaluation against the registry (after a snapshot, a resync or a
subscriber reset) may overlap with events still queued without double counting. No
polling: the engine sleeps until the journal offers it something.
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

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.identity import life_text
from app.core.journal import Event, Subscriber
from app.core.life import LifeView, iso
from app.core.registry import Registry

log = logging.getLogger(__name__)

RUNNING, NOT_RUNNING = "running", "not running"
# Events that can change a watch. `gap` is always followed by `resync`, which re-evaluates.
_RELEVANT = frozenset({"born", "exec", "died", "snapshot", "resync", "reset"})
_FULL = frozenset({"snapshot", "resync", "reset"})
QUEUE = 1 << 16  # the engine is fast; a large queue keeps it on the incremental path


class WatchSpec(BaseModel):
    """What a watch matches. Every given criterion must hold; at least one is required.
    `exe`, `comm` and `parent` are shell globs (fnmatch); `argv` is an RE2 regular
    expression searched in the arguments joined by single spaces."""

    # Patterns run on every birth and exec, on the event loop that also reads the kernel:
    # argv is RE2 (linear time, see compile_argv) and every pattern is kept short.
    model_config = ConfigDict(frozen=True, extra="forbid", str_max_length=512)

    exe: str | None = Field(None, description="glob on the executable path, e.g. /usr/sbin/ntpd")
    comm: str | None = Field(None, description="glob on the command name (15 chars max)")
    argv: str | None = Field(None, description="RE2 regular expression searched in ' '.join(argv)")
    uid: int | None = Field(None, ge=0, strict=True, description="real uid")
    parent: str | None = Field(None, description="glob on the parent's comm or exe")
    # strict: `"min": false` or `"canary": 1` is a mistake to report, not a value to coerce
    min: int = Field(1, ge=0, strict=True, description="fewest matching lives that are healthy")
    max: int | None = Field(
        None, ge=0, strict=True, description="most matching lives that are healthy"
    )
    canary: bool = Field(False, strict=True, description="also match lifewatch's own canary lives")

    @field_validator("argv")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                compile_argv(v)
            except re2.error as e:
                why = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
                raise ValueError(
                    f"argv is not a valid RE2 regular expression: {why} (RE2 has no "
                    "backreferences or lookaround)"
                ) from None
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
    """A compiled WatchSpec: one cheap test per life (globs compiled to regexes once)."""

    __slots__ = ("_argv", "_comm", "_exe", "_parent", "spec")

    def __init__(self, spec: WatchSpec) -> None:
        self.spec = spec
        self._comm = _compile_glob(spec.comm)
        self._exe = _compile_glob(spec.exe)
        self._parent = _compile_glob(spec.parent)
        self._argv = compile_argv(spec.argv) if spec.argv is not None else None

    def __call__(self, life: LifeView, parent_of: ParentOf) -> bool:
        s = self.spec
        if life.died_at is not None or (life.canary and not s.canary):
            return False
        if s.uid is not None and life.uid != s.uid:
            return False
        if self._comm is not None and (life.comm is None or not self._comm(life.comm)):
            return False
        if self._exe is not None and (life.exe is None or not self._exe(life.exe)):
            return False
        if self._argv is not None and not self._argv(" ".join(life.argv)):
            return False
        if self._parent is not None:
            parent = parent_of(life)
            if parent is None or not (
                (parent.comm is not None and self._parent(parent.comm))
                or (parent.exe is not None and self._parent(parent.exe))
            ):
                return False
        return True


_RE2 = re2.Options()
_RE2.log_errors = False  # a bad pattern is the API's 400, not a line on the daemon's stderr
_RE2.never_capture = True


def compile_argv(pattern: str) -> Callable[[str], object]:
    """`search` of an argv pattern, with RE2 rather than `re`: RE2 matches in time linear in
    the text, where a backtracking pattern such as `(a+)+$` takes `re` seconds per argv
    (2.2 s on 25 characters here), and a stalled loop would report no deaths at all."""
    return re2.compile(pattern, options=_RE2).search  # type: ignore[no-any-return]


def _compile_glob(pattern: str | None) -> Callable[[str], object] | None:
    if pattern is None:
        return None
    return re.compile(fnmatch.translate(pattern)).match


def literal(pattern: str | None) -> str | None:
    """The pattern itself when it has no glob characters (then it can be indexed)."""
    if pattern is None or any(c in pattern for c in "*?["):
        return None
    return pattern


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
        # A literal comm or exe lets the engine find this watch by dict lookup (index key).
        comm, exe = literal(spec.comm), literal(spec.exe)
        self.index = f"c:{comm}" if comm else f"e:{exe}" if exe else None

    @property
    def since(self) -> float:
        return self._since

    @since.setter
    def since(self, when: float) -> None:
        self._since = when
        self._since_iso = iso(when)  # formatted once per state change, not per event

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
            "since": self._since_iso,
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
        # Most lives match no watch: these make that answer a couple of dict lookups.
        self._index: dict[str, list[Watch]] = {}  # "c:<comm>" / "e:<exe>" -> watches
        self._generic: list[Watch] = []  # watches without a literal comm or exe
        self._members: dict[Key, int] = {}  # lives in at least one watch -> how many
        self._running = False
        # Configured watches are defined at start(), against the snapshot, so they begin
        # in their true state instead of flapping from "not running".
        self._configured = dict(specs or {})

    # -- definitions (config file and PUT/DELETE /v1/watches/{name}) -------------------
    def define(self, name: str, spec: WatchSpec) -> tuple[Watch, bool]:
        """Create or replace a watch; (watch, created). Re-putting the same spec is a no-op."""
        old = self.watches.get(name)
        if old is not None and old.spec == spec:
            return old, False
        if old is not None:
            self._forget(old)
        watch = Watch(name, spec, self._clock())
        self.watches[name] = watch
        for life in self.registry.alive.values():
            view = life.snapshot()
            if watch.match(view, self._parent_of):
                key = (view.pid, view.start_ticks)
                watch.lives[key] = view
                self._members[key] = self._members.get(key, 0) + 1
        self._reindex()
        self._emit(watch, "defined" if old is None else "redefined", None, None)
        self._follow()
        return watch, old is None

    def remove(self, name: str) -> Watch | None:
        watch = self.watches.pop(name, None)
        if watch is not None:
            self._forget(watch)
            self._reindex()
            if not self.watches:
                self._unfollow()
            self.registry.journal.append(
                "watch", None, {**watch.summary(), "change": "removed"}, 0, None
            )
        return watch

    def _forget(self, watch: Watch) -> None:
        for key in watch.lives:
            n = self._members.get(key, 0) - 1
            if n > 0:
                self._members[key] = n
            else:
                self._members.pop(key, None)

    def _reindex(self) -> None:
        self._index.clear()
        self._generic = []
        for watch in self.watches.values():
            if watch.index is None:
                self._generic.append(watch)
            else:
                self._index.setdefault(watch.index, []).append(watch)

    def life_ids(self, watch: Watch) -> list[dict[str, Any]]:
        """The watch's lives in brief, oldest first (for the API and the dashboard)."""
        host, clock = self.registry.node.hostname, self.registry.node.clock
        out = []
        for v in sorted(watch.lives.values(), key=lambda v: v.start_ticks):
            start = clock.date_of(v.start_ticks)
            out.append(
                {"id": life_text(host, v.pid, start), "pid": v.pid, "start": start,
                 "comm": v.comm, "exe": v.exe}
            )  # fmt: skip
        return out

    def view(self, watch: Watch) -> dict[str, Any]:
        """A watch as the API shows it (openapi.yaml `Watch`)."""
        return {
            "name": watch.name,
            "spec": watch.spec.model_dump(exclude_none=True),
            **{k: v for k, v in watch.summary().items() if k != "watch"},
            "changed_at": iso(watch.changed_at),
            "lives": self.life_ids(watch),
        }

    @property
    def subscribed(self) -> int:
        """Journal subscribers the engine holds (1 while it has watches to keep)."""
        return 0 if self._sub is None else 1

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        """Define the configured watches and follow the journal while there are any."""
        self._running = True
        for name, spec in self._configured.items():
            self.define(name, spec)
        self._follow()

    def _follow(self) -> None:
        """Subscribe only while some watch exists: a node without watches pays nothing.
        Subscribing and evaluating happen in one synchronous step: no event falls between."""
        if not self._running or self._sub is not None or not self.watches:
            return
        self._sub = self.registry.journal.subscribe(lambda e: e.type in _RELEVANT, QUEUE)
        self.reevaluate()
        self._task = asyncio.create_task(self._run(self._sub), name="watch-engine")

    def _unfollow(self) -> asyncio.Task[None] | None:
        task, self._task = self._task, None
        if self._sub is not None:
            self._sub.close()  # next_batch returns [] and the task ends
            self._sub = None
        return task

    async def stop(self) -> None:
        self._running = False
        task = self._unfollow()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
        index = self._index
        cands = self._generic
        if index:
            by_comm = index.get(f"c:{life.comm}")
            by_exe = index.get(f"e:{life.exe}")
            if by_comm or by_exe:
                cands = [*cands, *(by_comm or ()), *(by_exe or ())]
        for watch in cands:
            if watch.match(life, self._parent_of):
                if key in watch.lives:
                    watch.lives[key] = life  # exec within the pattern: refresh, no change
                else:
                    self._set(watch, key, life, at, "joined")
            elif key in watch.lives:
                self._set(watch, key, None, at, "left")  # exec'd into something else
        if key in self._members:  # it may have exec'd out of a watch not among cands
            for watch in self.watches.values():
                if key in watch.lives and not watch.match(life, self._parent_of):
                    self._set(watch, key, None, at, "left")

    def _leave(self, life: LifeView, at: float) -> None:
        key = (life.pid, life.start_ticks)
        if key not in self._members:
            return
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
        if old is not None:
            n = self._members.get(key, 0) - 1
            if n > 0:
                self._members[key] = n
            else:
                self._members.pop(key, None)
        if life is not None:
            watch.lives[key] = life
            self._members[key] = self._members.get(key, 0) + 1
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
