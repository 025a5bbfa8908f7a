"""JSON bytes for what the daemon pushes: orjson, with the standard library for what orjson refuses.

orjson encodes a `died` event in 0.7 us against 8-16 us for `json.dumps` (bench/micro in
bench/RESULTS.md, "Death latency"); on the death path, after idle, that difference is
about 0.2 ms of the 1 ms budget.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        # A comm or argv that is not UTF-8 holds lone surrogates (read with surrogateescape):
        # orjson refuses them, the standard encoder writes them as \udcXX escapes.
        return json.dumps(obj, separators=(",", ":")).encode()
