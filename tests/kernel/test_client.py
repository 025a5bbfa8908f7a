"""The Python client against a real daemon: the README's partner example run verbatim, and
the questions (check, lookup, follow, partners) answered as the HTTP API answers them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.client import Lifewatch, LifewatchError
from app.procfs import read_stat
from tests.helpers import free_port, listening, stop

README = Path(__file__).parent.parent.parent / "README.md"
SERVER = """
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
time.sleep(60)
"""
# The middleware: a process with a connection to its partner, then the README's program.
MIDDLEWARE = """
import socket, sys
partner = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
example = open(sys.argv[2]).read()
exec(compile(example, "README example", "exec"))
"""


def readme_example() -> str:
    text = README.read_text()
    block = text.split("<!-- client-example -->", 1)[1]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    env = dict(os.environ, LIFEWATCH_PORT=str(port), LIFEWATCH_STATE_DIR=str(tmp_path),
               LIFEWATCH_CANARY_INTERVAL="0")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--sources", "proc"],
                            env=env, stderr=subprocess.PIPE)  # fmt: skip
    try:
        await listening(proc, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


async def test_the_readme_example_is_told_its_partner_died(daemon: str, tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(readme_example())
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    env = dict(os.environ, LIFEWATCH_URL=daemon)
    mw = subprocess.Popen([sys.executable, "-c", MIDDLEWARE, port, str(example)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        async with Lifewatch(daemon) as lw:
            host = (await lw.node())["host"]
            ticks = read_stat(server.pid).start_ticks
            server_id = (await lw.lookup(f"{host}/{server.pid}/{ticks}")).id
            # The example is subscribed once the daemon follows its partner.
            deadline = time.monotonic() + 20
            while (await lw.node())["follow"]["followed"] < 1:
                assert mw.poll() is None, mw.communicate()
                assert time.monotonic() < deadline, "the example never subscribed"
                await asyncio.sleep(0.05)
        server.kill()
        out, err = mw.communicate(timeout=10)
    finally:
        for p in (server, mw):
            if p.poll() is None:
                p.kill()
            p.wait()
    assert mw.returncode == 0, err
    assert out.startswith(f"partner gone: {server_id} via 127.0.0.1:{port}"), (out, err)


async def test_questions(daemon: str) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        async with Lifewatch(daemon) as lw:
            host = (await lw.node())["host"]
            lid = f"{host}/{sleeper.pid}/{read_stat(sleeper.pid).start_ticks}"
            assert (await lw.lookup(lid)).state == "alive"
            followed = await lw.follow(lid)
            assert followed["following"] is True
            assert await lw.me(sleeper.pid) == followed["id"]
            answers = await lw.check([lid, "garbage"])
            assert [a.state for a in answers] == ["alive", "invalid"]
            assert answers[1].reason
            assert await lw.partners(lid) == []  # sleep holds no socket
            sleeper.kill()
            sleeper.wait()
            stream = lw.stream({"types": "died", "pid": str(sleeper.pid)}, after=0)
            ev = await asyncio.wait_for(anext(stream), 5)
            assert ev.type == "died" and ev.life is not None and ev.life["id"] == followed["id"]
            await stream.aclose()
            with pytest.raises(LifewatchError) as e:
                await lw.request("GET", "/v1/lives/0")
            assert e.value.status == 400
        async with Lifewatch("http://127.0.0.1:1") as nobody:
            with pytest.raises(LifewatchError) as e:
                await nobody.node()
            assert e.value.status == 0 and e.value.error == "unreachable"
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_cli_partners_table(daemon: str) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    client = subprocess.Popen(
        [sys.executable, "-c", MIDDLEWARE.split("example =")[0] + "import time; time.sleep(60)",
         port], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        async with Lifewatch(daemon) as lw:
            server_id = await lw.me(server.pid)
            deadline = time.monotonic() + 10
            while not await lw.partners(await lw.me(client.pid)):
                assert time.monotonic() < deadline, "the client never connected"
                await asyncio.sleep(0.05)
        out = subprocess.run(
            [sys.executable, "-m", "app", "partners", str(client.pid), "--url", daemon],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].endswith(": 1 connections") and lines[1].startswith("CONNECTION")
        assert f"-> 127.0.0.1:{port}" in lines[2] and server_id in lines[2]
        assert lines[2].rstrip().endswith("alive")
        gone = subprocess.run(
            [sys.executable, "-m", "app", "partners", "999999", "--url", daemon],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert gone.returncode == 2 and "lifewatch:" in gone.stderr
    finally:
        for p in (server, client):
            p.kill()
            p.wait()
