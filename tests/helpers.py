"""Helpers shared by every test room: one config builder, one wait-until, one subscriber reader,
and one way to start and stop a daemon process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.api.callers import TOKENS
from app.core.config import Config
from app.core.journal import Event, Subscriber
from app.procfs import parse_stat

DATA = Path(__file__).parent / "data"
T = TypeVar("T")
# The admin token of test daemons: TCP needs a token for everything but /healthz, and the
# tests' clients (api_client) send it unless a test says otherwise.
TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_config(**kw: object) -> Config:
    """A Config for tests: no kernel source, nothing on disk, any free port, no Unix socket,
    the admin token TOKEN, unless asked."""
    base: dict[str, object] = {
        "sources": (), "state_dir": None, "port": 0, "socket": None, "token": TOKEN,
    }  # fmt: skip
    base.update(kw)
    return Config.model_validate(base)


def api_client(app: web.Application) -> TestClient[web.Request, web.Application]:
    """A TCP test client of `app` that sends the app's admin token (if it has one) on every
    request: the one place tests get their credentials from."""
    admin = app[TOKENS].admin
    auth = {"Authorization": f"Bearer {admin.decode()}"} if admin else {}
    return TestClient(TestServer(app), headers=auth)


async def wait_until(cond: Callable[[], T | None], timeout: float = 10.0, step: float = 0.01) -> T:
    """Await until `cond()` is truthy and return it (never None, then); fails the test after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(step)


async def wait_until_blocking(
    cond: Callable[[], T | None], timeout: float = 10.0, step: float = 0.01
) -> T:
    """`wait_until` for a `cond` that blocks (a synchronous HTTP call to a daemon): run in a
    thread, so the test's own loop (a client, a collector) keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(cond)
        if got:
            return got
        assert time.monotonic() < deadline, f"condition not met within {timeout} s"
        await asyncio.sleep(step)


_unread: dict[int, list[Event]] = {}


async def read_until(
    sub: Subscriber, want: Callable[[Event], bool], timeout: float = 5.0
) -> list[Event]:
    """Read `sub` until an event satisfies `want`; returns everything read up to it. Events
    after it in the same batch are kept for the next call."""
    seen: list[Event] = []
    backlog = _unread.setdefault(id(sub), [])

    async def run() -> None:
        while True:
            batch = backlog[:] or await sub.next_batch()
            backlog.clear()
            for i, ev in enumerate(batch):
                seen.append(ev)
                if want(ev):
                    backlog.extend(batch[i + 1 :])
                    return

    await asyncio.wait_for(run(), timeout)
    return seen


def died(pid: int) -> Callable[[Event], bool]:
    return lambda ev: ev.type == "died" and ev.life is not None and ev.life.pid == pid


def exec_done(pid: int) -> None:
    """Popen returns when exec closes its CLOEXEC pipe, which is before the kernel has
    set up the new argv: /proc/<pid>/cmdline can still read empty for a moment."""
    for _ in range(200):
        if Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        time.sleep(0.005)


def start_ticks(pid: int) -> int:
    return parse_stat(Path(f"/proc/{pid}/stat").read_bytes()).start_ticks


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    """Await until the daemon `proc` accepts on `port`; fails the test, with its stderr when
    it was captured, if it exits first or takes longer than `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "lifewatch serve did not listen"
            await asyncio.sleep(0.05)


def stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """SIGTERM (a daemon removes its audit rules and releases the audit pid), then SIGKILL
    if it has not exited within `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
