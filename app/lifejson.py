"""Lives and events as JSON bytes, made cheap on the death path.

A `died` event is pushed within a millisecond of the death, and after a few milliseconds of
idle every Python step on the way costs ten times its warm time (bench/RESULTS.md, "Death
latency"). Most of a life's JSON cannot change at its death, so that part (the head) is
encoded while the life is born or execs, when a stream is listening, and kept for the most
recent lives; at the death only the state, the exit and the sources are added. The bytes are
exactly those of encoding `LifeView.to_json` whole (tests/test_lifejson.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from app.identity import TickClock
from app.jsontext import dumps
from app.life import LifeView, iso, source_names

HEADS = 4096  # lives whose head is kept: the recently born or exec'd


class LifeEncoder:
    def __init__(self, host: str, boot_id: str, clock: TickClock, heads: int = HEADS) -> None:
        self.host = host
        self.boot_id = boot_id
        self.clock = clock
        self.size = heads
        # (pid, start_ticks) -> (head_key, b'{"id":...,"canary":false' without its brace)
        self._heads: OrderedDict[tuple[int, int], tuple[tuple[Any, ...], bytes]] = OrderedDict()
        # (exit, cause, sources) -> b',"exit":...,"cause":...,"sources":[...]}'
        self._ends: dict[tuple[Any, ...], bytes] = {}
        self._sources: dict[int, bytes] = {}

    def life_json(self, view: LifeView) -> dict[str, Any]:
        return view.to_json(self.host, self.boot_id, self.clock)

    def head(self, view: LifeView) -> bytes:
        """The encoded head of `view`, from the cache when the life has not changed."""
        where = (view.pid, view.start_ticks)
        key = view[:10] + view[14:]  # view.head_key(), without a call on the death path
        hit = self._heads.get(where)
        if hit is not None and hit[0] == key:
            return hit[1]
        head = dumps(view.head_json(self.host, self.boot_id, self.clock))[:-1]
        self._heads[where] = (key, head)
        self._heads.move_to_end(where)
        if len(self._heads) > self.size:
            self._heads.popitem(last=False)
        return head

    def life_bytes(self, view: LifeView, died_at: bytes | None = None) -> bytes:
        """`view` as JSON; `died_at` is its death's date when the caller has it encoded."""
        if died_at is not None:
            died = b'"%s"' % died_at
        elif view.died_at is None:
            died = b"null"
        else:
            died = b'"%s"' % (iso(view.died_at) or "").encode()
        return b'%s,"state":"%s","died_at":%s%s' % (
            self.head(view),
            view.state.encode(),
            died,
            self._end(view),
        )

    def _end(self, view: LifeView) -> bytes:
        key = (view.exit, view.cause, view.sources)
        end = self._ends.get(key)
        if end is None:
            tail = view.tail_json()
            del tail["state"], tail["died_at"]
            end = b"," + dumps(tail)[1:]
            if len(self._ends) > 1024:  # causes and exits are few; never grow for ever
                self._ends.clear()
            self._ends[key] = end
        return end

    def sources_bytes(self, bits: int) -> bytes:
        out = self._sources.get(bits)
        if out is None:
            out = self._sources[bits] = dumps(source_names(bits))
        return out
