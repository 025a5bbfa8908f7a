"""The cluster side's stop is bounded: a task that swallows its cancellation (as nats-py's
reconnect loop can, nats-io/nats.py#981) is left behind with a warning, and the daemon's
stop goes on rather than hanging."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from app.cluster import node as cluster_node
from app.cluster.node import Cluster


async def test_a_task_that_ignores_cancel_does_not_hold_the_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cluster_node, "STOP_WAIT", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    async def polite() -> None:
        await asyncio.sleep(3600)

    cluster = Cluster.__new__(Cluster)  # only what stop() reads
    cluster._tasks = [asyncio.create_task(stubborn()), asyncio.create_task(polite())]
    cluster.publisher = None
    cluster.nc = None
    await asyncio.sleep(0.05)  # both running, inside their sleeps
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with caplog.at_level(logging.WARNING, logger=cluster_node.__name__):
        await cluster.stop()
    assert loop.time() - t0 < 1.0
    assert cluster._tasks[1].cancelled()
    assert "1 task(s) did not stop" in caplog.text and "stubborn" in caplog.text
    release.set()
    await cluster._tasks[0]
