"""JSON bytes for what the daemon pushes: orjson, with the standard library for what orjson refuses.

orjson encodes a `died` event in 0.7 us against 8-16 us for `json.dumps` (bench/micro in
bench/RESULTS.md, "Death latency"); on the death path, after idle, that difference is
about 0.2 ms of the 1 ms budget.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from app.api.bytetext import scrub


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # What orjson refuses: an int beyond 64 bits, or a string that is not UTF-8 (lives
        # come here escaped by bytetext.escape_life; this is the last resort for any other
        # string). Never `\udcXX` escapes: strict parsers refuse lone surrogates (issue 10).
        return json.dumps(scrub(obj), separators=(",", ":")).encode()


class BytePage:
    """JSON items for one answer, up to a byte budget (Config.page_bytes): an answer never
    grows without bound. The first item always goes, however large: a page must advance."""

    def __init__(self, budget: int) -> None:
        self.items: list[bytes] = []
        self._left = budget

    def add(self, data: bytes) -> bool:
        """Take `data` if it fits (counting its comma); False when the page is full."""
        if self.items and len(data) + 1 > self._left:
            return False
        self._left -= len(data) + 1
        self.items.append(data)
        return True

    def __len__(self) -> int:
        return len(self.items)

    def joined(self) -> bytes:
        return b",".join(self.items)
