"""Who may read what, for real (issue 10, Must show): a daemon with the proc source serves
its Unix socket; a user created for the test asks as itself (SO_PEERCRED), with aiohttp,
over REST, the journal and the stream.

It sees the state and exit of root's lives but not their argv or exe, sees its own argv,
and `whoami` says its uid; it cannot change anything. The user is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.api.app import make_app
from app.api.listen import open_listeners
from app.core.service import Service
from tests.helpers import exec_done, make_config, start_ticks, wait_until

pytestmark = pytest.mark.root_test_side("a user is made with useradd and run with setpriv")

# Run by the test user with the project's Python (aiohttp), talking to the socket only.
CLIENT = r"""
import asyncio, json, sys
import aiohttp

async def main(sock, root, own, after, host, alive_root):
    out = {}
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(sock)) as s:
        async def get(path):
            async with s.get("http://localhost" + path) as r:
                return r.status, await r.json()
        out["whoami"] = (await get("/v1/whoami"))[1]
        out["root"] = (await get("/v1/lives/" + root))[1]
        out["check"] = (await (await s.post("http://localhost/v1/lives/check",
                                            json={"lives": [host + "/" + root]})).json())
        out["own"] = (await get("/v1/lives/" + own))[1]
        out["conn_root"] = await get(f"/v1/connections?life={host}/{alive_root}")
        out["conn_own"] = await get(f"/v1/connections?life={host}/{own}")
        out["lives"] = (await get("/v1/lives?limit=10000"))[1]["lives"]
        out["events"] = (await get(f"/v1/events?after={after}&limit=10000"))[1]["events"]
        async with s.post("http://localhost/v1/resync") as r:
            out["resync"] = [r.status, await r.json()]
        async with s.put("http://localhost/v1/watches/x", json={"comm": "x"}) as r:
            out["put_watch"] = r.status
        seen = []
        async with s.ws_connect(f"http://localhost/v1/stream?after={after}") as ws:
            while not any(e["type"] == "died" and e["life"]["pid"] == int(root.split("/")[0])
                          for e in seen):
                msg = await ws.receive(timeout=10)
                seen.append(json.loads(msg.data))
        out["stream"] = seen
    print(json.dumps(out))

asyncio.run(main(*sys.argv[1:4], int(sys.argv[4]), sys.argv[5], sys.argv[6]))
"""


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    name = f"lwtest{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
async def socket_daemon() -> AsyncIterator[tuple[Service, Path]]:
    where = Path(tempfile.mkdtemp(prefix="lw-who-"))
    os.chmod(where, 0o755)  # the test user reaches the socket inside
    config = make_config(sources=("proc",), socket=where / "lifewatch.sock", canary_interval=0)
    service = Service(config)
    app = make_app(service)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await open_listeners(runner, app, config)
        yield service, where / "lifewatch.sock"
    finally:
        await runner.cleanup()
        shutil.rmtree(where, ignore_errors=True)


def spawn(argv: list[str], uid: int = 0, gid: int = 0) -> subprocess.Popen[bytes]:
    if uid:  # setpriv execs in place: the pid is the program's
        argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE)
    exec_done(p.pid)
    return p


async def test_a_user_sees_facts_of_roots_lives_and_details_of_its_own(
    socket_daemon: tuple[Service, Path], user: pwd.struct_passwd
) -> None:
    service, sock = socket_daemon
    after = service.journal.last_cursor
    secret = "root-secret-argv-4242"
    root_life = spawn(["sh", "-c", "read x", secret])  # waits on stdin
    own = spawn(["sh", "-c", "read x", "own-argv-4343"], user.pw_uid, user.pw_gid)
    try:
        root_id = f"{root_life.pid}/{start_ticks(root_life.pid)}"
        own_id = f"{own.pid}/{start_ticks(own.pid)}"
        await wait_until(lambda: service.registry.find(own.pid, start_ticks(own.pid)))
        root_life.send_signal(signal.SIGKILL)
        root_life.wait()
        await wait_until(
            lambda: (
                (life := service.registry.find(*map(int, root_id.split("/")))) and not life.alive
            )
        )
        got = await _ask_as(user, sock, root_id, own_id, after, service.node.hostname)
    finally:
        for p in (root_life, own):
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait()

    who = got["whoami"]
    assert (who["via"], who["uid"], who["scopes"], who["may_change"]) == (
        "unix", user.pw_uid, [], False,
    )  # fmt: skip
    assert who["sees"]["details"] == "own"
    # root's life: its state and exit, not its argv or exe
    root = got["root"]
    assert root["state"] == "dead" and root["exit"]["signal"] == 9
    assert root["life"]["argv"] is None and root["life"]["exe"] is None
    assert root["life"]["redacted"] == ["argv", "exe"] and root["life"]["comm"] == "sh"
    assert got["check"]["results"][0]["state"] == "dead"
    assert got["check"]["results"][0]["life"]["argv"] is None
    # its own life: whole
    own_life = got["own"]["life"]
    assert got["own"]["state"] == "alive"
    assert own_life["argv"] == ["sh", "-c", "read x", "own-argv-4343"]
    assert own_life["uid"] == user.pw_uid and "redacted" not in own_life
    assert own_life["exe"] and own_life["exe"].endswith("sh")
    # lists, the journal and the stream: root's argv nowhere, the user's own there
    listed = json.dumps(got["lives"])
    assert secret not in listed and "own-argv-4343" in listed
    for where in ("events", "stream"):
        evs = got[where]
        died = [e for e in evs if e["type"] == "died" and e["life"]["pid"] == root_life.pid]
        assert died and died[0]["life"]["exit"]["signal"] == 9, where
        assert died[0]["life"]["argv"] is None and died[0]["life"]["exe"] is None, where
        assert secret not in json.dumps(evs), where
    # no changes for a plain user
    assert got["resync"][0] == 403 and got["put_watch"] == 403
    # connections: as /proc/<pid>/fd, a live root process's are not shown; its own are
    assert got["conn_root"][0] == 403 and got["conn_root"][1]["error"] == "forbidden"
    assert got["conn_own"][0] == 200 and got["conn_own"][1]["connections"] == []


async def _ask_as(
    user: pwd.struct_passwd, sock: Path, root_id: str, own_id: str, after: int, host: str
) -> dict[str, Any]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
        sys.executable, "-c", CLIENT, str(sock), root_id, own_id, str(after), host,
        f"{os.getpid()}/{start_ticks(os.getpid())}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/",
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


HIDEPID_CLIENT = r"""
import asyncio, json, sys
import aiohttp

async def main(sock, host):
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(sock)) as s:
        async def get(path):
            async with s.get("http://localhost" + path) as r:
                return await r.json()
        print(json.dumps({"whoami": await get("/v1/whoami"),
                          "lives": (await get("/v1/lives?limit=10000"))["lives"],
                          "init": await get("/v1/lives/1"),
                          "check": await get("/v1/lives/1/" + sys.argv[3])}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.fixture
def hidden_proc() -> Iterator[Path]:
    """A proc instance mounted hidepid=invisible (each mount has its own options)."""
    where = Path(tempfile.mkdtemp(prefix="lw-proc-"))
    subprocess.run(["mount", "-t", "proc", "-o", "hidepid=invisible", "proc", str(where)],
                   check=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        where.rmdir()


async def test_hidepid_shows_a_user_only_its_own_lives(
    hidden_proc: Path, user: pwd.struct_passwd
) -> None:
    where = Path(tempfile.mkdtemp(prefix="lw-who-"))
    os.chmod(where, 0o755)
    config = make_config(socket=where / "lifewatch.sock", canary_interval=0)
    own = spawn(["sh", "-c", "read x", "own-hidden-4545"], user.pw_uid, user.pw_gid)
    service = Service(config, proc=hidden_proc)  # the snapshot reads this mount
    app = make_app(service)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await open_listeners(runner, app, config)
        import asyncio

        proc = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            sys.executable, "-c", HIDEPID_CLIENT, str(where / "lifewatch.sock"),
            service.node.hostname, str(start_ticks(1)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/",
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        got = json.loads(out)
    finally:
        own.kill()
        own.wait()
        await runner.cleanup()
        shutil.rmtree(where, ignore_errors=True)
    assert got["whoami"]["sees"] == {"facts": "own", "details": "own", "hidepid": 2}
    uids = {life["uid"] for life in got["lives"]}
    assert uids == {user.pw_uid}, uids  # root's lives (init, the daemon...) are not listed
    assert any(life["argv"] == ["sh", "-c", "read x", "own-hidden-4545"] for life in got["lives"])
    assert got["init"]["error"] == "not_found"
    assert got["check"]["state"] == "unknown" and "hidepid" in got["check"]["reason"]
