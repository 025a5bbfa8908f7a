"""Helpers shared by the proc connector, fusion, follow and canary tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.config import Config
from app.journal import Event, Subscriber


def kernel_only() -> pytest.MarkDecorator:
    """Tests on the live kernel need root. Skipped only outside CI: in CI a skip would hide a
    failure, so there the test runs and fails if it cannot."""
    if os.geteuid() == 0 or os.environ.get("CI"):
        return pytest.mark.kernel
    return pytest.mark.skip(reason="needs root (the live kernel); runs in CI")


def config(tmp_path: Path, **kw: object) -> Config:
    base: dict[str, object] = {"state_dir": tmp_path, "canary_interval": 0, "port": 0}
    base.update(kw)
    return Config.model_validate(base)


_unread: dict[int, list[Event]] = {}


async def wait_for(
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
