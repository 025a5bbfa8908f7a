"""Following a life with a pidfd: its death is reported with no event source at all."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.follow import FollowError
from app.core.service import Service
from app.netlink.pidfd import pidfd_exit_status
from app.procfs import read_stat
from tests.helpers import died, make_config, read_until


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Service]:
    """Both event sources off: only pidfds can tell a death."""
    s = Service(make_config(sources=(), state_dir=tmp_path, max_follow=2))
    await s.start()
    yield s
    await s.stop()


def test_pidfd_gives_the_exit_status_of_a_reaped_process() -> None:
    p = subprocess.Popen(["sh", "-c", "exit 7"])
    fd = os.pidfd_open(p.pid)
    try:
        select.select([fd], [], [])
        assert pidfd_exit_status(fd) is None  # a zombie: not reaped yet
        p.wait()
        status = pidfd_exit_status(fd)
        assert status is not None and os.waitstatus_to_exitcode(status) == 7  # Linux 6.15+
    finally:
        os.close(fd)


@pytest.mark.parametrize(("argv", "sig", "code"), [
    (["sleep", "30"], signal.SIGKILL, None),
    (["sleep", "30"], signal.SIGTERM, None),
    (["sh", "-c", "sleep 0.2; exit 3"], None, 3),
])  # fmt: skip
async def test_followed_death_is_reported_with_both_sources_off(
    bare: Service, argv: list[str], sig: int | None, code: int | None
) -> None:
    p = subprocess.Popen(argv)
    try:
        await asyncio.sleep(0.02)
        ticks = read_stat(p.pid).start_ticks
        sub = bare.journal.subscribe(lambda e: e.type == "died", 100)
        life = bare.follower.follow(p.pid, ticks)
        fd = os.pidfd_open(p.pid)
        assert life.alive and life.pidfd_ino == os.fstat(fd).st_ino  # pidfs identity
        os.close(fd)
        if sig is not None:
            p.send_signal(sig)
        (ev,) = await read_until(sub, died(p.pid))
        assert ev.life is not None and ev.life.exit is not None
        assert (ev.life.exit.signal, ev.life.exit.code) == (sig, code)
        assert ev.sources == 8  # pidfd alone
        assert len(bare.follower) == 0  # the pidfd is closed
    finally:
        p.kill()
        p.wait()


async def test_follow_refuses_past_the_limit_and_wrong_lives(bare: Service) -> None:
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        await asyncio.sleep(0.02)
        ticks = [read_stat(p.pid).start_ticks for p in procs]
        bare.follower.follow(procs[0].pid, ticks[0])
        bare.follower.follow(procs[0].pid, ticks[0])  # the same life twice: one pidfd
        bare.follower.follow(procs[1].pid, ticks[1])
        with pytest.raises(FollowError) as e:
            bare.follower.follow(procs[2].pid, ticks[2])
        assert e.value.error == "follow_limit" and "max_follow" in e.value.detail
        bare.follower.release(procs[1].pid)
        with pytest.raises(FollowError) as e:
            bare.follower.follow(procs[2].pid, ticks[2] - 5)  # pid held by another start
        assert e.value.error == "not_found"
        assert bare.follower.follow(procs[2].pid, ticks[2]).alive
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def test_following_a_dead_life_answers_with_its_death(bare: Service) -> None:
    p = subprocess.Popen(["sleep", "30"])
    await asyncio.sleep(0.02)
    ticks = read_stat(p.pid).start_ticks
    sub = bare.journal.subscribe(lambda e: e.type == "died", 100)
    bare.follower.follow(p.pid, ticks)
    p.kill()
    await read_until(sub, died(p.pid))
    p.wait()
    life = bare.follower.follow(p.pid, ticks)
    assert not life.alive and life.exit is not None and life.exit.signal == 9
