"""Server-to-client WebSocket text frames (RFC 6455 5.2): FIN, opcode 1, no mask, no extension.

aiohttp's writer makes the same bytes, but only through a coroutine: the journal pushes each
event onto an idle client's transport synchronously, from the kernel reader's callback, and a
coroutine there would cost the hop this saves (bench/death_latency.py). tests/unit/test_wsframe.py
checks these frames byte for byte against aiohttp's writer.
"""

from __future__ import annotations

import struct

_LEN1 = struct.Struct("!BB")
_LEN2 = struct.Struct("!BBH")
_LEN8 = struct.Struct("!BBQ")
FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return _LEN1.pack(FIN_TEXT, n) + payload
    if n < 1 << 16:
        return _LEN2.pack(FIN_TEXT, 126, n) + payload
    return _LEN8.pack(FIN_TEXT, 127, n) + payload
