"""This node's facts on NATS: every death of a local life stored in the deaths stream and seen
by core subscribers at once, births and execs on core NATS only.

Fed from the journal through a bounded subscriber (app/core/journal.py): the kernel reader
only appends; this task encodes and sends. A death is sent once as a JetStream publish: the
one message reaches core subscribers of its subject at once and the stream stores it when it
can (during a leader election it cannot, for seconds). Until the stream acknowledges it, the
death waits in the outbox and is sent again, oldest first, with the same `Nats-Msg-Id`
(the stream drops the repeat; receivers drop repeats by the same id). The outbox is in
memory, bounded, counted, its oldest dropped (and counted) past `outbox`, and, when the
durable journal runs, in its database too (app/cluster/outbox.py): a restart sends what a
stopped or crashed run left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.cluster.outbox import DiskOutbox
from app.cluster.subjects import Subjects
from app.core.fanout import Interest
from app.core.journal import Encoder, Event, Journal, Subscriber
from app.core.life import LifeView
from app.core.registry import Registry

log = logging.getLogger(__name__)

LIFE_EVENTS = frozenset({"born", "exec", "died"})
STORE_TIMEOUT = 2.0  # s an unacknowledged death waits before it is sent again
RECENT = 512  # publish latencies kept for /v1/nodes


def msg_id(boot_id: str, ev: Event, lv: LifeView) -> str:
    """Deaths and births are named by the life and the transition: a retry after a reconnect,
    or a daemon restarted on the same boot, sends the same id. An exec by its cursor (a
    life may exec many times)."""
    if ev.type == "exec":
        return f"{boot_id}.{lv.pid}.{lv.start_ticks}.exec.{ev.cursor}"
    return f"{boot_id}.{lv.pid}.{lv.start_ticks}.{ev.type}"


@dataclass(slots=True)
class Pending:
    subject: str
    body: bytes
    queued: float  # monotonic
    sent: float = 0.0
    tries: int = 0
    future: asyncio.Future[Any] | None = None


@dataclass(slots=True)
class PublishStats:
    deaths: int = 0
    births: int = 0
    stored: int = 0
    duplicates: int = 0  # the stream had it already: a retry whose first try was stored
    retries: int = 0
    outbox_dropped: int = 0
    not_sent: int = 0  # births and execs while disconnected (core only: not kept)
    out_of_scope: int = 0
    journal_gaps: int = 0
    errors: int = 0
    store_latency: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))


class Scope:
    """Test-only (`scope_pid`): the lives that descend from one pid, so that daemons sharing one
    kernel each speak for the processes their test gave them (docs/cluster.md)."""

    def __init__(self, root: int, registry: Registry) -> None:
        self.root = root
        kids: dict[int, list[int]] = {}
        for life in registry.alive.values():
            kids.setdefault(life.ppid, []).append(life.pid)
        self.pids = {root}
        todo = [root]
        while todo:
            for kid in kids.get(todo.pop(), ()):
                if kid not in self.pids:
                    self.pids.add(kid)
                    todo.append(kid)

    def admits(self, ev: Event, lv: LifeView) -> bool:
        if ev.type == "born" and (lv.ppid in self.pids or lv.pid == self.root):
            self.pids.add(lv.pid)
            return True
        inside = lv.pid in self.pids
        if ev.type == "died" and inside and lv.pid != self.root:
            self.pids.discard(lv.pid)
        return inside


Send = Callable[[str, bytes, dict[str, str]], Any]


class Publisher:
    def __init__(
        self,
        me: str,
        boot_id: str,
        subjects: Subjects,
        journal: Journal,
        encoder: Encoder,
        queue: int,
        outbox: int,
        publish_births: bool,
        scope: Scope | None,
        local: Callable[[str, bytes], object],
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me, self.boot_id, self.subjects = me, boot_id, subjects
        self.encoder = encoder
        self.limit = outbox
        self.publish_births = publish_births
        self.scope = scope
        self._local = local  # this node's own events, into the cluster view without a hop
        self._mono = mono
        self.outbox: OrderedDict[str, Pending] = OrderedDict()
        self.disk: DiskOutbox | None = None  # the outbox's copy in the store, when one runs
        self.stats = PublishStats()
        # From the start of this run (after=0): what happened while NATS was being reached
        # is sent too; a window that moved on gives gap + reset, counted.
        self.sub: Subscriber = journal.subscribe(Interest(types=LIFE_EVENTS), queue, after=0)
        self.js: Any = None  # nats.js.JetStreamContext, once connected
        self.nc: Any = None
        self._kick = asyncio.Event()

    def oldest_age(self) -> float:
        if not self.outbox:
            return 0.0
        return self._mono() - next(iter(self.outbox.values())).queued

    async def run(self) -> None:
        while True:
            batch = await self.sub.next_batch()
            if not batch:
                return
            for ev in batch:
                await self._one(ev)

    async def _one(self, ev: Event) -> None:
        lv = ev.life
        if lv is None:
            if ev.type == "gap":
                self.stats.journal_gaps += 1
                log.error("cluster publisher fell behind the journal: %s", ev.fields)
            return
        if self.scope is not None and not self.scope.admits(ev, lv):
            self.stats.out_of_scope += 1
            return
        body = ev.json(self.encoder)
        mid = msg_id(self.boot_id, ev, lv)
        self._local(mid, body)
        if ev.type == "died":
            self.stats.deaths += 1
            p = Pending(self.subjects.died(self.me), body, self._mono())
            self.outbox[mid] = p
            self.outbox.move_to_end(mid)
            if self.disk is not None:
                self.disk.added(mid, p.subject, body)
            while len(self.outbox) > self.limit:
                old, _ = self.outbox.popitem(last=False)
                self.stats.outbox_dropped += 1
                if self.disk is not None:
                    self.disk.removed(old)
            await self._send(mid, p)
        elif self.publish_births:
            self.stats.births += 1
            nc = self.nc
            if nc is None or not nc.is_connected:
                self.stats.not_sent += 1
                return
            try:
                await nc.publish(self.subjects.life(self.me), body, headers={"Nats-Msg-Id": mid})
            except Exception as e:
                self.stats.errors += 1
                log.debug("birth not sent: %s", e)

    async def _send(self, mid: str, p: Pending) -> None:
        js = self.js
        if js is None or self.nc is None or not self.nc.is_connected:
            return  # the retry loop sends it once connected
        p.tries += 1
        p.sent = self._mono()
        try:
            fut = await js.publish_async(
                p.subject, p.body, headers={"Nats-Msg-Id": mid}, wait_stall=0.5
            )
        except Exception as e:
            self.stats.errors += 1
            log.debug("death %s not sent: %s", mid, e)
            return
        p.future = fut
        fut.add_done_callback(lambda f: self._acked(mid, p, f))

    def _acked(self, mid: str, p: Pending, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            if p.future is fut:
                p.future = None
                self._kick.set()
            return
        if self.outbox.pop(mid, None) is not None:
            if self.disk is not None:
                self.disk.removed(mid)
            ack = fut.result()
            self.stats.stored += 1
            if getattr(ack, "duplicate", False):
                self.stats.duplicates += 1
            self.stats.store_latency.append(self._mono() - p.queued)

    async def retry(self, every: float = 0.25) -> None:
        """Send again, oldest first, each death that failed or was not acknowledged within
        STORE_TIMEOUT; at once after a reconnect or a failure."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), every)
            self._kick.clear()
            if self.js is None or self.nc is None or not self.nc.is_connected:
                continue
            now = self._mono()
            for mid, p in list(self.outbox.items()):
                f = p.future
                if f is not None and not f.done() and now - p.sent < STORE_TIMEOUT:
                    continue
                if f is not None and not f.done():
                    f.cancel()
                if self.outbox.get(mid) is p:
                    if p.tries:
                        self.stats.retries += 1
                    await self._send(mid, p)

    def kick(self) -> None:
        self._kick.set()

    def restore(self, rows: list[tuple[str, str, bytes]]) -> int:
        """Deaths an earlier run left unacknowledged (DiskOutbox.load), queued (before this
        run's, when called at start) oldest first. Returns how many."""
        now = self._mono()
        for mid, subject, body in rows:
            if mid not in self.outbox:
                self.outbox[mid] = Pending(subject, body, now)
        self._kick.set()
        return len(rows)
