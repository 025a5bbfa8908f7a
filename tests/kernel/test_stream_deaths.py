"""A WebSocket client subscribed to `died` receives every kind of death, once, within
milliseconds, from the proc connector alone."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.core.service import Service
from tests.helpers import api_client, make_config

Client = TestClient[Any, Any]


@pytest.fixture
async def proc_client(tmp_path: Path) -> AsyncIterator[Client]:
    svc = Service(make_config(sources=("proc",), state_dir=tmp_path, canary_interval=0))
    async with api_client(make_app(svc)) as c:
        yield c


CASES = [
    (["sleep", "30"], signal.SIGKILL, {"code": None, "signal": 9}),
    (["sleep", "30"], signal.SIGTERM, {"code": None, "signal": 15}),
    ([sys.executable, "-c", "import ctypes; ctypes.string_at(0)"], None,
     {"code": None, "signal": 11}),
    (["sh", "-c", "exit 3"], None, {"code": 3, "signal": None}),
]  # fmt: skip


async def test_each_death_reaches_a_websocket_once_within_milliseconds(
    proc_client: Client,
) -> None:
    ours: set[int] = set()
    async with proc_client.ws_connect("/v1/stream?types=died") as ws:
        for argv, sig, want in CASES:
            p = subprocess.Popen(argv)
            ours.add(p.pid)
            if sig is not None:
                time.sleep(0.05)
                t0 = time.monotonic()
                p.send_signal(sig)
            else:
                t0 = time.monotonic()
            while True:
                msg = json.loads((await ws.receive(timeout=5)).data)
                if msg["life"]["pid"] == p.pid:
                    break
            elapsed = time.monotonic() - t0
            p.wait()
            got = msg["life"]["exit"]
            assert {"code": got["code"], "signal": got["signal"]} == want, argv
            assert msg["sources"] == ["proc"]
            if sig is not None:
                assert elapsed < 0.1, elapsed  # milliseconds, with room for a busy CI machine
        # No second report of any of them.
        pids = set()
        try:
            while True:
                extra = json.loads((await ws.receive(timeout=0.3)).data)
                pids.add(extra["life"]["pid"])
        except TimeoutError:
            pass
        assert not pids & ours
