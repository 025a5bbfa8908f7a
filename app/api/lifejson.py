"""Lives and events as JSON bytes, made cheap on the death path.

A `died` event is pushed within a millisecond of the death, and after a few milliseconds of
idle every Python step on the way costs ten times its warm time (bench/RESULTS.md, "Death
latency"). Most of a life's JSON cannot change at its death, so that part (the head) is
encoded while the life is born or execs, when a stream is listening, and kept for the most
recent lives; at the death only the state, the exit and the sources are added. The bytes are
exactly those of encoding `life_json` whole (tests/unit/test_lifejson.py). The registry
calls `head` through the core's `Encoder` protocol (app/core/journal.py), set by make_app.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import orjson

from app.api.bytetext import escape_life
from app.api.jsontext import dumps
from app.core.identity import NodeIdentity, TickClock
from app.core.life import LifeView, iso, source_names

if TYPE_CHECKING:
    from app.core.journal import Event

HEADS = 4096  # lives whose head is kept: the recently born or exec'd
HEAD_MAX = 16 * 1024  # bytes: a longer head (a huge argv) is encoded when needed, not kept
MESSAGE_MAX = 1 << 20  # bytes of one event or life (Config.max_message_bytes)
REDACTED = ["argv", "exe"]  # what a caller who may not see a life's details is not shown


def redact(life: dict[str, Any]) -> dict[str, Any]:
    """`life` as shown to a caller who may not see its details (docs/security.md, "Who may
    read what"): argv and exe null, and `redacted` naming them."""
    out = dict(life, exe=None, argv=None, argv_truncated=False, redacted=REDACTED)
    escaped = out.get("bytes_escaped")
    if escaped is not None:
        kept = [f for f in escaped if f not in REDACTED]
        if kept:
            out["bytes_escaped"] = kept
        else:
            del out["bytes_escaped"]
    return out


def fit(life: dict[str, Any], over: int) -> dict[str, Any]:
    """`life` with its argv cut so that its JSON is about `over` bytes shorter (at least):
    an event is never larger than the largest message (no poison pill for a client's
    message limit). The cut is marked as a cut at argv_max is: `argv_truncated`."""
    argv = life.get("argv") or []
    keep: list[str] = []
    budget = max(sum(len(dumps(a)) + 1 for a in argv) - over - 64, 0)
    for arg in argv:
        size = len(dumps(arg)) + 1
        if size > budget:
            # Up to 6 bytes of JSON per character (\u0001): cut to what surely fits.
            if budget > 16:
                keep.append(arg[: (budget - 3) // 6])
            break
        keep.append(arg)
        budget -= size
    return dict(life, argv=keep, argv_truncated=True)


class LifeEncoder:
    def __init__(
        self,
        host: str,
        boot_id: str,
        clock: TickClock,
        heads: int = HEADS,
        message_max: int = MESSAGE_MAX,
    ) -> None:
        self.message_max = message_max
        self.host = host
        self.boot_id = boot_id
        self.clock = clock
        self.size = heads
        # (pid, start_ticks) -> (head_key, b'{"id":...,"canary":false' without its brace)
        self._heads: OrderedDict[tuple[int, int], tuple[tuple[Any, ...], bytes]] = OrderedDict()
        # (exit, cause, sources) -> b',"exit":...,"cause":...,"sources":[...]}'
        self._ends: dict[tuple[Any, ...], bytes] = {}
        self._sources: dict[int, bytes] = {}

    @classmethod
    def for_node(cls, node: NodeIdentity, message_max: int = MESSAGE_MAX) -> LifeEncoder:
        return cls(node.hostname, node.boot_id, node.clock, message_max=message_max)

    def life_json(self, view: LifeView, redacted: bool = False) -> dict[str, Any]:
        """The API's life object, argv/comm/exe escaped if not UTF-8 (app/api/bytetext.py);
        `redacted`: without argv and exe (docs/security.md)."""
        d = escape_life(view.head_json(self.host, self.boot_id, self.clock)) | view.tail_json()
        return redact(d) if redacted else d

    def life_bytes(self, view: LifeView, redacted: bool = False) -> bytes:
        """life_json as JSON, at most `message_max` bytes (argv cut when longer)."""
        d = self.life_json(view, redacted)
        out = dumps(d)
        if len(out) > self.message_max:
            out = dumps(fit(d, len(out) - self.message_max))
        return out

    def event_bytes_redacted(self, ev: Event) -> bytes:
        """The event for callers who may not see its life's details: made once per event
        and shared by all of them (Event.json_redacted), never per client."""
        if ev.life is None:
            return self.event_bytes(ev)
        d = ev.to_dict(self)
        d["life"] = redact(d["life"])
        return dumps(d)

    def _fitted(self, ev: Event) -> bytes:
        d = ev.to_dict(self)
        over = len(dumps(d)) - self.message_max
        d["life"] = fit(d["life"], over)
        return dumps(d)

    def head(self, view: LifeView) -> bytes:
        """The encoded head of `view`, from the cache when the life has not changed."""
        where = (view.pid, view.start_ticks)
        key = view.head_key()
        hit = self._heads.get(where)
        if hit is not None and hit[0] == key:
            return hit[1]
        obj = view.head_json(self.host, self.boot_id, self.clock)
        try:
            head = orjson.dumps(obj)[:-1]
        except orjson.JSONEncodeError:
            # Bytes that are not UTF-8 in argv, comm or exe (lone surrogates): escaped only on
            # this path, so valid UTF-8 pays nothing for it.
            head = dumps(escape_life(obj))[:-1]
        if len(head) <= HEAD_MAX and view.died_at is None:
            self._heads[where] = (key, head)
            self._heads.move_to_end(where)
            if len(self._heads) > self.size:
                self._heads.popitem(last=False)
        return head

    def event_bytes(self, ev: Event) -> bytes:
        """`ev.to_dict(self)` as JSON. A life event is put together from parts: the life's
        head, encoded earlier, and a few small fragments; `type` needs no escaping. One
        function on purpose: this runs on the death path, where each call costs."""
        view = ev.life
        if view is None:
            return dumps(ev.to_dict(self))
        at = self._date(ev.at)
        out = b'{"cursor":%d,"type":"%s","at":%s' % (ev.cursor, ev.type.encode(), at)
        if ev.sources:
            out += b',"sources":' + (
                self._sources.get(ev.sources) or self.sources_bytes(ev.sources)
            )
        if ev.fields:
            out += b"," + dumps(ev.fields)[1:-1]
        # head(view), inlined: this is the death path. A dead life's head is not needed again.
        where = (view.pid, view.start_ticks)
        dead = view.died_at is not None
        hit = self._heads.pop(where, None) if dead else self._heads.get(where)
        head = hit[1] if hit is not None and hit[0] == view.head_key() else self.head(view)
        # A death's event is dated by the death: one date to write, not two.
        died = at if view.died_at == ev.at else self._date(view.died_at)
        out = b'%s,"life":%s%s}' % (out, head, self._rest(view, died))
        # A huge argv (argv_max up to 1 MiB, escaped up to 6 bytes a byte) is cut to fit.
        return out if len(out) <= self.message_max else self._fitted(ev)

    def _date(self, epoch: float | None) -> bytes:
        return b"null" if epoch is None else b'"%s"' % (iso(epoch) or "").encode()

    def _rest(self, view: LifeView, died: bytes) -> bytes:
        end = self._ends.get((view.exit, view.cause, view.sources, view.died_after))
        end = end or self._end(view)
        return b',"state":"%s","died_at":%s%s' % (view.state.encode(), died, end)

    def _end(self, view: LifeView) -> bytes:
        tail = view.tail_json()
        del tail["state"], tail["died_at"]
        end = b"," + dumps(tail)[1:]
        if len(self._ends) > 1024:  # causes and exits are few; never grow for ever
            self._ends.clear()
        self._ends[(view.exit, view.cause, view.sources, view.died_after)] = end
        return end

    def sources_bytes(self, bits: int) -> bytes:
        out = self._sources.get(bits)
        if out is None:
            out = self._sources[bits] = dumps(source_names(bits))
        return out
