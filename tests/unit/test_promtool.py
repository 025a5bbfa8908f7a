"""`promtool check metrics` (Prometheus's own linter, from Debian's prometheus package) finds
nothing to say about lifewatch's /metrics: names, types, units, help."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from app.api.app import make_app
from app.api.prometheus import LatencyHistogram
from app.core.service import Service
from app.sources.observations import Fork, Loss
from tests.helpers import api_client, make_config
from tests.scripted import ScriptedSource


class AuditLike(ScriptedSource):
    """Reports what the audit source does: counters, levels, the kernel's figures, latencies."""

    def __init__(self) -> None:
        super().__init__("audit")
        self.latencies = {"audit": LatencyHistogram()}


def promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (scripts/test-deps.sh installs it as root)")
        pytest.skip("promtool is missing (scripts/test-deps.sh installs it as root)")
    return tool


async def test_metrics_pass_promtool() -> None:
    tool = promtool()
    src = AuditLike()
    service = Service(make_config(watches={"w": {"comm": "x"}}), sources=[src])
    await service.start()
    try:
        h = src.health()
        h.counters.update(kernel_lost=3, backlog=2, datagrams=10, socket_queue_bytes=0)
        h.info["backlog_limit"] = "8192"
        src.push(Fork("audit", 4242, 1, 1.0))
        src.push(Loss("audit", "serial_gap", 1.5, "2 records"))
        src.latencies["audit"].observe(0.001)
        async with api_client(make_app(service, manage=False)) as c:
            await c.get("/v1/node")
            r = await c.get("/metrics")
            text = await r.text()
    finally:
        await service.stop()
    assert "lifewatch_source_count_total" in text and "lifewatch_kernel_lost_total" in text
    lint = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr
