"""Nothing forgotten across a restart (issue 11): real `lifewatch serve` processes on one
state directory, stopped (SIGTERM), killed (-9) and started again, against the real kernel.

The daemons run the proc connector only (no audit: these tests are about the journal, and
the proc connector sees every death). Each test stops every daemon it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.core.store import SEQ_BITS, Resolver
from tests.helpers import AUTH, free_port, start_ticks, wait_until

ROOT = Path(__file__).parent.parent.parent


class Daemon:
    """One `lifewatch serve` run on `state`."""

    def __init__(self, state: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full = dict(os.environ, LIFEWATCH_PORT=str(self.port), LIFEWATCH_STATE_DIR=str(state),
                    LIFEWATCH_CANARY_INTERVAL="0", **env)  # fmt: skip
        self.log = state / f"daemon.{self.port}.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--sources", "proc"],
                env=full, stderr=err, cwd=ROOT,
            )  # fmt: skip

    async def ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "lifewatch serve did not listen"
                await asyncio.sleep(0.05)

    def get(self, path: str) -> Any:
        try:
            req = urllib.request.Request(self.url + path, headers=AUTH)
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
async def daemons() -> AsyncIterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(state: Path, **env: str) -> Daemon:
        d = Daemon(state, **env)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()


async def events_after(url: str, after: int, until: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """A stream client resuming after `after`: what it is sent until `until` holds."""
    got: list[dict[str, Any]] = []
    ws_url = url.replace("http", "ws") + f"/v1/stream?after={after}"
    async with aiohttp.ClientSession(headers=AUTH) as s, s.ws_connect(ws_url) as ws:
        async with asyncio.timeout(10):
            async for msg in ws:
                ev = json.loads(msg.data)
                got.append(ev)
                if until(ev):
                    return got
    raise AssertionError(f"stream ended before the wanted event: {got}")


async def alive(d: Daemon, pid: int, ticks: int) -> dict[str, Any]:
    return await wait_until(lambda: (a := d.get(f"/v1/lives/{pid}/{ticks}"))["state"] == "alive"
                            and a)  # fmt: skip


async def test_sigterm_kill_start_answers_while_down(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    d1 = daemons(tmp_path)
    await d1.ready()
    sleep = subprocess.Popen(["sleep", "600"])
    try:
        ticks = start_ticks(sleep.pid)
        await alive(d1, sleep.pid, ticks)
        cursor = d1.get("/v1/node")["cursor"]
        assert d1.stop() == 0
        stopped = time.time()
        sleep.kill()
        late = subprocess.Popen(["sleep", "600"])  # born while the daemon is down
    finally:
        sleep.kill()
        sleep.wait()
    d2 = daemons(tmp_path)
    try:
        await _resumed(d2, sleep.pid, ticks, cursor, stopped, late)
    finally:
        late.kill()
        late.wait()


async def _resumed(
    d2: Daemon, pid: int, ticks: int, cursor: int, stopped: float, late: subprocess.Popen[bytes]
) -> None:
    await d2.ready()
    started = time.time()
    ans = d2.get(f"/v1/lives/{pid}/{ticks}")
    assert ans["state"] == "dead", ans
    life = ans["life"]
    assert life["cause"] == "while_down" and ans["exit"] is None
    low, high = life["died_between"]
    assert low <= _iso(stopped) and _iso(stopped) <= high <= _iso(started + 1), life
    assert d2.get("/v1/node")["cursor"] >> SEQ_BITS == cursor >> SEQ_BITS  # the same boot
    # A client resuming with its cursor from before the restart: the downtime's gap, then the
    # death; never a reset.
    got = await events_after(d2.url, cursor, lambda ev: ev["type"] == "died"
                             and ev["life"]["pid"] == pid)  # fmt: skip
    assert [e for e in got if e["type"] == "reset"] == []
    gaps = [e for e in got if e["type"] == "gap"]
    assert gaps and gaps[0]["reason"] == "daemon_stopped" and gaps[0]["lost_cursors"] is None
    died = got[-1]
    assert died["life"]["exit"] is None and died["life"]["cause"] == "while_down"
    # A process born while the daemon was down and still alive: a late `born` follows.
    got = await events_after(d2.url, cursor, lambda ev: ev["type"] == "born"
                             and ev["life"]["pid"] == late.pid)  # fmt: skip
    assert got[-1].get("late") is True
    assert died["cursor"] > cursor
    page = d2.get(f"/v1/events?after={cursor}")
    assert page["reset"] is False
    assert any(e["type"] == "died" and e["life"]["pid"] == pid for e in page["events"])


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


async def test_new_boot_id_kills_the_old_boots_lives(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    old, new = "00000000-test-boot-0000-000000000001", "00000000-test-boot-0000-000000000002"
    boot = tmp_path / "boot_id"  # the test-only override (Config.boot_id_file)
    boot.write_text(old + "\n")
    d1 = daemons(tmp_path, LIFEWATCH_BOOT_ID_FILE=str(boot))
    await d1.ready()
    sleep = subprocess.Popen(["sleep", "600"])
    try:
        ticks = start_ticks(sleep.pid)
        await alive(d1, sleep.pid, ticks)
        cursor = d1.get("/v1/node")["cursor"]
        assert d1.stop() == 0
        boot.write_text(new + "\n")  # "rebooted"
        d2 = daemons(tmp_path, LIFEWATCH_BOOT_ID_FILE=str(boot))
        await d2.ready()
        assert d2.get("/v1/node")["boot_id"] == new
        # The old boot's life, in the history: dead with the reboot, in its own boot's name.
        page = d2.get("/v1/lives?since=0&comm=sleep&limit=10000")
        mine = [x for x in page["lives"] if x["pid"] == sleep.pid and x["boot_id"] == old]
        assert len(mine) == 1, page
        assert mine[0]["state"] == "dead" and mine[0]["cause"] == "node_rebooted"
        assert mine[0]["exit"] is None and len(mine[0]["died_between"]) == 2
        assert mine[0]["start_ticks"] == ticks
        # A cursor of the old boot: reset, with the reason.
        got = await events_after(d2.url, cursor, lambda ev: ev["type"] == "reset")
        assert got[0]["type"] == "reset" and got[0]["reason"] == "node_rebooted"
        gaps = d2.get("/v1/events?types=gap")["events"]
        assert any(g["reason"] == "node_rebooted" and g["previous_boot"] == old for g in gaps)
    finally:
        sleep.kill()
        sleep.wait()


async def test_kill_9_during_a_storm(daemons: Callable[..., Daemon], tmp_path: Path) -> None:
    d1 = daemons(tmp_path)
    await d1.ready()
    truth = [tmp_path / f"storm.{i}" for i in range(2)]
    storms = [subprocess.Popen([sys.executable, "-m", "tests.kernel.forkstorm", "3", str(t)],
                               cwd=ROOT) for t in truth]  # fmt: skip
    try:
        await asyncio.sleep(1.5)
        d1.proc.kill()  # kill -9, mid-storm
        d1.proc.wait()
    finally:
        for s in storms:
            assert s.wait(20) == 0
    # What the dead daemon had committed, read from its database as it left it.
    db = sqlite3.connect(f"file:{tmp_path / 'lifewatch.db'}?mode=ro", uri=True)
    rows = db.execute("SELECT cursor, life FROM lives WHERE died_at IS NOT NULL").fetchall()
    resolver = Resolver(db)
    committed = [v for v in (resolver.view(c, b) for c, b in rows) if v is not None]
    assert resolver.skipped == 0
    top = db.execute("SELECT max(last) FROM chunks").fetchone()[0]
    db.close()
    lives = {}
    for t in truth:
        for line in t.read_text().splitlines():
            pid, ticks, code = map(int, line.split())
            lives[(pid, ticks)] = code
    storm_dead = [v for v in committed if (v.pid, v.start_ticks) in lives]
    assert len(storm_dead) > 100, "the storm's deaths were committed while it ran"
    d2 = daemons(tmp_path)
    await d2.ready()  # no crash
    # One answer scans at most 8,192 events from disk: the gap may be pages ahead.
    gaps, after = [], 0
    while True:
        page = d2.get(f"/v1/events?types=gap&after={after}")
        gaps += page["events"]
        if page["next"] == after or any(g["reason"] == "daemon_crashed" for g in gaps):
            break
        after = page["next"]
    crash = [g for g in gaps if g["reason"] == "daemon_crashed"]
    assert len(crash) == 1, gaps
    lost = crash[0]["lost_cursors"]
    assert lost[0] == top + 1 and lost[1] >= lost[0]
    assert crash[0]["since"] < crash[0]["until"]
    # Every death it had committed answers as committed: dead, with its exit code.
    body = {"lives": [f"{d2.get('/v1/node')['host']}/{v.pid}/{v.start_ticks}"
                      for v in storm_dead]}  # fmt: skip
    req = urllib.request.Request(d2.url + "/v1/lives/check", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", **AUTH})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        results = json.load(r)["results"]
    for v, got in zip(storm_dead, results, strict=True):
        assert got["state"] == "dead", got
        assert got["exit"]["code"] == lives[(v.pid, v.start_ticks)], (got, v)


def _can_renice() -> bool:
    """Whether this process (and so the daemon it starts) has CAP_SYS_NICE (bit 23)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 23 & 1)
    return False


def _nice(task: Path) -> int:
    return int((task / "stat").read_bytes().rsplit(b")", 1)[1].split()[16])  # field 19


async def test_the_kernel_readers_thread_runs_at_priority_boost(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    """As auditd's priority_boost: the event loop's thread at nice -4 (root may), threads
    started before it (the store's writer) at the nice they had; with 0, none changed."""
    d = daemons(tmp_path)
    await d.ready()
    tasks = Path(f"/proc/{d.proc.pid}/task")
    if not _can_renice():  # the unprivileged pass (the unit's capabilities): said, not done
        await wait_until(lambda: "priority_boost 4 not applied" in d.log.read_text())
        assert _nice(tasks / str(d.proc.pid)) == 0
        return
    await wait_until(lambda: _nice(tasks / str(d.proc.pid)) == -4)
    others = [_nice(t) for t in tasks.iterdir() if t.name != str(d.proc.pid)]
    assert others and 0 in others, others  # the writer (started before the boost) kept 0
    (tmp_path / "off").mkdir()
    off = daemons(tmp_path / "off", LIFEWATCH_PRIORITY_BOOST="0")
    await off.ready()
    await asyncio.sleep(0.5)
    assert _nice(Path(f"/proc/{off.proc.pid}/task/{off.proc.pid}")) == 0
