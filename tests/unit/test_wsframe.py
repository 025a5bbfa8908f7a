"""Our pushed WebSocket frames are byte for byte what aiohttp's own writer sends."""

from __future__ import annotations

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from app.api.wsframe import text_frame


class Transport:
    def __init__(self) -> None:
        self.out = b""

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False


class Protocol:
    _paused = False


@pytest.mark.parametrize("size", [0, 1, 125, 126, 700, 65535, 65536, 200_000])
async def test_text_frames_match_aiohttp(size: int) -> None:
    payload = bytes(range(97, 123)) * (size // 26) + b"z" * (size % 26)
    transport = Transport()
    writer = WebSocketWriter(Protocol(), transport)  # type: ignore[arg-type]
    await writer.send_frame(payload, WSMsgType.TEXT)
    assert text_frame(payload) == transport.out
