"""A lookup racing the exit event of a just-reaped child (issue 8): the lookup finds the pid
gone from /proc before lifewatch has read the child's exit; the life must end `dead` with its
true exit code, and no loss may be reported, for none happened.

The children are forked and reaped by a helper process (not the daemon: design.md fact 3).
While the test reaps a child and looks it up over HTTP, lifewatch's kernel readers are paused:
the exit event waits in the source's socket, as it does whenever the reader is a moment
behind, and is read once they resume.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api.app import make_app
from app.core.config import Config
from app.core.service import Service
from tests.helpers import api_client, wait_until
from tests.kernel.audit_kernel import KEY, kernel_audit_state, wait_unicast_free

CHILDREN = 300

# Forks children that wait on a pipe, then releases and reaps one per request.
HELPER = """
import os, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
held = {}
for line in inp:
    cmd, arg = line.split()
    if cmd == b"f":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(w)
            os.read(r, 1)
            os._exit(int(arg))
        os.close(r)
        held[pid] = w
        out.write(b"%d\\n" % pid)
    else:
        pid = int(arg)
        os.write(held.pop(pid), b"x")
        _, status = os.waitpid(pid, 0)
        out.write(b"%d %d\\n" % (pid, status))
    out.flush()
"""


class Helper:
    """The helper process, spoken to with blocking reads: the event loop waits too."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", HELPER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        )  # fmt: skip

    def ask(self, line: str) -> list[int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        return [int(x) for x in self.proc.stdout.readline().split()]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


def config(sources: str, tmp: Path) -> Config:
    extra: dict[str, Any] = {}
    if "audit" in sources:
        extra = {"audit_key": KEY, "audit_mode": "unicast"}
    return Config(sources=tuple(sources.split(",")), state_dir=tmp, canary_interval=0, **extra)


@pytest.fixture(params=["proc", "audit,proc"])
async def svc(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Service]:
    sources: str = request.param
    if "audit" not in sources:
        s = Service(config(sources, tmp_path))
        await s.start()
        yield s
        await s.stop()
        return
    async for _found in kernel_audit_state():  # restores the kernel's audit state after
        await wait_unicast_free()
        s = Service(config(sources, tmp_path))
        await s.start()
        try:
            assert all(src.health().state == "ok" for src in s.sources), s.sources
            yield s
        finally:
            await s.stop()


def gaps(svc: Service) -> int:
    return svc.journal.counts.get("gap", 0)


@contextlib.contextmanager
def readers_paused(svc: Service) -> Iterator[None]:
    """Lifewatch stops reading its kernel sockets: what the kernel reports meanwhile waits
    there, as it does when the reader is a moment behind (white box: the sources' pacers,
    app/sources/pacing.py, which alone watch the sockets)."""
    pacers: list[Any] = [src._pacer for src in svc.sources]  # type: ignore[attr-defined]
    for pacer in pacers:
        pacer.stop()
    try:
        yield
    finally:
        for pacer in pacers:
            pacer.start()


async def test_a_lookup_that_beats_the_exit_event_keeps_the_exit_code(svc: Service) -> None:
    gaps_before = gaps(svc)
    helper = Helper()
    app = make_app(svc, manage=False)
    async with api_client(app) as client:
        try:
            code = {helper.ask(f"f {i % 200 + 1}")[0]: i % 200 + 1 for i in range(CHILDREN)}
            # Every child known alive, with its start, before any of them exits.
            await wait_until(lambda: all(pid in svc.registry.alive for pid in code), 20.0)
            ticks = {pid: svc.registry.alive[pid].start_ticks for pid in code}
            raced = 0
            with readers_paused(svc):
                for pid in code:
                    reaped, status = helper.ask(f"x {pid}")
                    assert reaped == pid and os.WEXITSTATUS(status) == code[pid]
                    ans = await (await client.get(f"/v1/lives/{pid}/{ticks[pid]}")).json()
                    assert ans["state"] == "dead", ans  # the pid is gone: evidence enough
                    raced += ans["life"]["cause"] == "vanished"
        finally:
            helper.close()
        print(
            f"\n{svc.config.sources}: {raced} of {CHILDREN} lookups over HTTP found the pid "
            "gone before its exit event was read"
        )
        assert raced == CHILDREN

        def told() -> bool:
            return all((life := svc.registry.find(p, ticks[p])) is not None
                       and life.exit is not None for p in code)  # fmt: skip

        with contextlib.suppress(AssertionError):  # counted below, whatever happened
            await wait_until(told, 10.0)
        right = 0
        for pid, want in code.items():
            ans = await (await client.get(f"/v1/lives/{pid}/{ticks[pid]}")).json()
            assert ans["state"] == "dead", ans
            right += ans["exit"] == {"code": want, "signal": None, "core_dumped": False}
        node = await (await client.get("/v1/node")).json()
    print(f"{svc.config.sources}: exit codes right {right} of {CHILDREN}; "
          f"gaps before {gaps_before}, after {gaps(svc)}")  # fmt: skip
    assert right == CHILDREN
    assert gaps(svc) == gaps_before and node["events"].get("gap", 0) == gaps_before
