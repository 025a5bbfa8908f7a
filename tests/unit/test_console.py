"""The client commands: `tail`'s line format, `ps` as a tree, `watch NAME`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from app.api.app import make_app
from app.cli.console import tree_lines
from app.cli.main import main
from app.cli.tail import Paint, format_event
from app.core.config import Config
from app.core.service import Service
from app.sources.observations import Exec, Exit, Fork
from tests.scripted import ScriptedSource

FAKE = 4_000_000
ID = "vm/4242/2026-11-26T00:47:19.13Z"
LIFE = {
    "id": ID, "pid": 4242, "ppid": 1, "comm": "sleep",
    "exe": "/usr/bin/sleep", "argv": ["sleep", "30"], "canary": False,
    "born_at": "2026-11-26T00:47:19.130000Z", "died_at": "2026-11-26T00:47:19.380000Z",
    "exit": {"code": None, "signal": 9, "core_dumped": False}, "cause": "signal",
}  # fmt: skip
AT = "2026-11-26T00:47:19.380000Z"


def test_tail_lines_say_what_happened() -> None:
    died = format_event({"cursor": 1, "type": "died", "at": AT, "life": LIFE})
    assert "died" in died and "4242" in died and "killed by SIGKILL after 250 ms" in died
    assert died.endswith(ID) and "\x1b[" not in died
    clean = format_event({"type": "died", "at": AT, "life": {**LIFE, "exit": {
        "code": 0, "signal": None, "core_dumped": False}}})  # fmt: skip
    assert "exit 0" in clean
    unknown = format_event({"type": "died", "at": AT, "life": {**LIFE, "exit": None,
                                                               "cause": "resync"}})  # fmt: skip
    assert "exit unknown (resync)" in unknown
    exec_ = format_event({"type": "exec", "at": AT, "life": LIFE})
    assert "sleep 30" in exec_
    gap = format_event({"type": "gap", "at": AT, "source": "audit", "reason": "serial_gap"})
    assert "source=audit reason=serial_gap" in gap
    watch = format_event({"type": "watch", "at": AT, "watch": "ntpd", "state": "not running",
                          "count": 0, "ok": False, "change": "left", "life": LIFE})  # fmt: skip
    assert "ntpd: not running (0) outside min..max · left pid 4242" in watch
    colored = format_event({"type": "died", "at": AT, "life": LIFE}, Paint(True))
    assert "\x1b[1;31mkilled by SIGKILL\x1b[0m" in colored


def test_ps_tree_keeps_ancestors_of_matches() -> None:
    def life(pid: int, ppid: int, comm: str, *argv: str) -> dict[str, Any]:
        return {"pid": pid, "ppid": ppid, "comm": comm, "argv": [comm, *argv], "uid": 0,
                "start": "2026-11-26T00:00:00.00Z", "canary": False}  # fmt: skip

    lives = [life(1, 0, "init"), life(10, 1, "sshd"), life(11, 10, "bash"),
             life(12, 11, "vim", "notes.txt"), life(20, 1, "cron")]  # fmt: skip
    text = tree_lines(lives, lambda x: "vim" in x["comm"], Paint(False), 200)
    body = [line[22:] for line in text[1:]]  # after PID, UID and AGE
    assert body == ["init", "└─ sshd", "   └─ bash", "      └─ vim notes.txt"]
    everything = tree_lines(lives, lambda x: True, Paint(False), 200)
    assert len(everything) == 6 and everything[-1].endswith("└─ cron")


def test_hostile_names_stay_on_one_line_and_cannot_drive_the_terminal() -> None:
    # A process chooses its comm and argv: newlines (a `sh -c` script), escape sequences and
    # bidi overrides come out escaped, never raw.
    hostile = {**LIFE, "comm": "x\x1b[2Jy", "argv": ["sh", "-c", "echo a\nrm -rf /\u202e"]}
    lines = [format_event({"type": t, "at": AT, "life": hostile}) for t in ("exec", "died")]
    lines += tree_lines([{**hostile, "uid": 0, "start": AT}], lambda x: True, Paint(False), 200)
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert "x\\x1b[2Jy" in lines[0] and "echo a\\nrm -rf /\\u202e" in lines[0]
    typed = {**LIFE, "argv": ["a\\nb", "\ufeff"]}
    literal = format_event({"type": "exec", "at": AT, "life": typed})
    assert "a\\\\nb \\ufeff" in literal  # a typed backslash is not an escaped newline
    assert "x\\x1b[2Jy sh -c echo a\\nrm -rf /\\u202e" in lines[-1]


@pytest.fixture
async def server(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, Service, ScriptedSource]]:
    monkeypatch.setenv("LIFEWATCH_TOKEN", "t")  # the CLI's token on TCP: never in argv
    src = ScriptedSource("proc")
    service = Service(Config(sources=(), state_dir=None, token="t"), sources=[src])
    await service.start()
    async with TestServer(make_app(service, manage=False)) as s:
        yield str(s.make_url("")).rstrip("/"), service, src
    await service.stop()


async def test_ps_and_watch_against_a_daemon(server: Any, capsys: Any) -> None:
    url, service, src = server
    await asyncio.to_thread(main, ["ps", "--url", url, "--color", "never", str(os.getpid())])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["PID", "UID", "AGE", "COMMAND"]
    assert any(line.split()[:1] == [str(os.getpid())] for line in out[1:]), out

    from app.core.watches import WatchSpec

    service.watches.define("fake", WatchSpec(comm="fakeprog"))

    async def script() -> None:
        await asyncio.sleep(0.3)  # the command has printed the state and subscribed
        src.push(Fork("proc", FAKE, 1, 1.0, start_ticks=77))
        src.push(Exec("proc", FAKE, 1.0, exe="/f", argv=("f",), comm="fakeprog"))
        src.push(Exit("proc", FAKE, 2.0, code=0, start_ticks=77))
        await asyncio.sleep(0.3)
        service.watches.remove("fake")  # ends the command

    task = asyncio.create_task(script())
    await asyncio.wait_for(
        asyncio.to_thread(main, ["watch", "--url", url, "--color", "never", "fake"]), 10
    )
    await task
    lines = capsys.readouterr().out.splitlines()
    assert "fake: not running count 0" in lines[0]
    assert "fake: running count 1" in lines[1] and "joined 4000000 fakeprog" in lines[1]
    assert "fake: not running count 0" in lines[2] and "left 4000000" in lines[2]
    assert lines[3].endswith("· removed")
