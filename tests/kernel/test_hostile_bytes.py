"""A real process with argv, comm and exe that are not UTF-8 (issue 10: `sleep\\xff\\xfe`), seen by
the proc connector: every stream message parses with orjson and unescapes to the bytes."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.api.bytetext import unescape
from app.core.service import Service
from tests.helpers import api_client, make_config

Client = TestClient[Any, Any]
ARGV = [b"sleep\xff\xfe", b"3"]


@pytest.fixture
async def proc_client(tmp_path: Path) -> AsyncIterator[Client]:
    svc = Service(make_config(sources=("proc",), state_dir=tmp_path, canary_interval=0))
    async with api_client(make_app(svc)) as c:
        yield c


def field(life: dict[str, Any], name: str) -> Any:
    escaped = name in life.get("bytes_escaped", ())

    def back(s: str) -> bytes:
        return unescape(s) if escaped else s.encode()

    return [back(a) for a in life[name]] if name == "argv" else back(life[name])


async def test_sleep_xff_xfe_over_the_stream_parses_with_orjson(
    proc_client: Client, tmp_path: Path
) -> None:
    folder = os.fsencode(tmp_path) + b"/bin\xff"
    os.mkdir(folder)
    exe = folder + b"/sleep\xfe\\"  # a backslash too: escaped with the bytes, given back
    shutil.copy("/bin/sleep", exe.decode("utf-8", "surrogateescape"))
    async with proc_client.ws_connect("/v1/stream?types=exec,died") as ws:
        p = subprocess.Popen(ARGV, executable=exe)
        seen: dict[str, dict[str, Any]] = {}
        try:
            deadline = time.monotonic() + 10
            while "exec" not in seen and time.monotonic() < deadline:
                msg = await ws.receive(timeout=5)
                assert msg.type == WSMsgType.TEXT
                ev = orjson.loads(msg.data.encode())  # raises on a lone surrogate
                if ev["life"]["pid"] == p.pid:
                    seen[ev["type"]] = ev
        finally:
            p.kill()
            p.wait()
        while "died" not in seen:
            msg = await ws.receive(timeout=5)
            ev = orjson.loads(msg.data.encode())
            if ev["life"]["pid"] == p.pid:
                seen[ev["type"]] = ev
    for ev in seen.values():
        life = ev["life"]
        assert field(life, "argv") == ARGV
        assert field(life, "exe") == exe
        assert field(life, "comm") == b"sleep\xfe\\"
        assert life["bytes_escaped"] == ["comm", "exe", "argv"]
    assert seen["died"]["life"]["exit"]["signal"] == 9
