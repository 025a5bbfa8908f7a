"""The event loop's lag and the kernel sockets' queues, as /metrics and /v1/node report them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app import procfs
from app.core.looplag import LoopLag


def test_lag_buckets_and_recent_max() -> None:
    lag = LoopLag(window=3)
    for x in (0.0, 0.002, 0.3, 0.0001):
        lag.observe(x)
    cum = dict(lag.cumulative())
    assert cum["0.0005"] == 2 and cum["0.0025"] == 3 and cum["0.5"] == 4 and cum["+Inf"] == 4
    assert lag.recent_max == 0.3 and lag.last == 0.0001
    lag.observe(0.0)
    assert lag.recent_max == 0.3
    lag.observe(0.0)
    lag.observe(0.0)
    assert lag.recent_max == 0.0  # the 0.3 s stall has left the window


async def test_a_stalled_loop_shows_as_lag() -> None:
    lag = LoopLag(interval=0.01)
    lag.start()
    try:
        await asyncio.sleep(0.02)
        time.sleep(0.1)  # the loop is stuck: the timer runs late by about this much
        await asyncio.sleep(0.03)
    finally:
        lag.stop()
    assert 0.05 < lag.recent_max < 1.0


def test_netlink_queue_bytes_by_inode(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "netlink").write_text(
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "00000000eb0ae01e 0   0          00000000 0        0        0     2        0        4\n"
        "000000002bcb9699 11  4242       00000001 212992   0        0     2        0        5650\n"
    )
    assert procfs.netlink_queues(tmp_path) == {4: 0, 5650: 212992}
    assert procfs.netlink_queues(tmp_path / "nowhere") == {}


async def test_metrics_and_node_show_the_loop_lag(
    client: TestClient[web.Request, web.Application],
) -> None:
    node = await (await client.get("/v1/node")).json()
    assert set(node["loop_lag"]) == {"last", "max_10s"}
    text = await (await client.get("/metrics")).text()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"lifewatch_event_loop_lag_seconds", "lifewatch_event_loop_lag_max_seconds"} <= names
