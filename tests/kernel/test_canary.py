"""The canary against the live kernel: a source that stops delivering turns `degraded` within
one round, one that delivers again turns `ok`, and canary lives are marked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core.config import Config
from app.core.service import Service
from app.sources.base import Sink
from app.sources.observations import Observation
from app.sources.proc import ProcConnectorSource
from tests.helpers import api_client, make_config, read_until


class Muted:
    """A sink between a source and the tracker that can be switched off: a source that
    silently stops delivering, as audit does when another tool disables it."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.muted = False

    def submit(self, obs: Observation) -> None:
        if not self.muted:
            self.sink.submit(obs)


class MutableProc(ProcConnectorSource):
    """A second proc connector reader standing in for another kernel source (it reports as
    `audit`, so the canary checks it too)."""

    name = "audit"

    def __init__(self, config: Config) -> None:
        super().__init__(config.proc_settings())
        self.gate: Muted | None = None

    async def start(self, sink: Sink) -> None:
        self.gate = Muted(sink)
        await super().start(self.gate)


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Service]:
    cfg = make_config(state_dir=tmp_path, canary_interval=60, canary_deadline=0.5)
    s = Service(cfg, sources=[ProcConnectorSource(cfg.proc_settings()), MutableProc(cfg)])
    await s.start()
    yield s
    await s.stop()


async def test_canary_passes_and_is_marked(svc: Service) -> None:
    assert svc.canary is not None
    sub = svc.journal.subscribe(lambda e: e.type == "died" and bool(e.life and e.life.canary), 10)
    got = await svc.canary.check_once()
    assert got == {"audit": True, "proc": True}
    last = svc.canary.stats.last_pid
    seen = await read_until(sub, lambda e: e.life is not None and e.life.pid == last)
    assert seen[-1].life is not None and seen[-1].life.canary
    for src in svc.sources:
        h = svc.source_health(src)
        assert h.state == "ok"
        assert h.counters["canary_passes"] >= 1
        assert 0 < h.counters["canary_latency_last_us"] < 500_000


async def test_a_source_that_stops_delivering_turns_degraded_then_ok(svc: Service) -> None:
    assert svc.canary is not None
    mutable = svc.sources[1]
    assert isinstance(mutable, MutableProc) and mutable.gate is not None
    notes = svc.journal.subscribe(lambda e: e.type == "source", 10)
    assert await svc.canary.check_once() == {"audit": True, "proc": True}

    mutable.gate.muted = True
    assert await svc.canary.check_once() == {"audit": False, "proc": True}
    h = svc.source_health(mutable)
    assert h.state == "degraded" and "birth and death not reported" in h.reason
    assert svc.source_health(svc.sources[0]).state == "ok"  # proc keeps reporting
    (ev,) = await read_until(notes, lambda e: True)
    assert ev.fields is not None and ev.fields["source"] == "audit"
    assert ev.fields["state"] == "degraded"

    mutable.gate.muted = False
    assert await svc.canary.check_once() == {"audit": True, "proc": True}
    assert svc.source_health(mutable).state == "ok"
    (ev,) = await read_until(notes, lambda e: True)
    assert ev.fields is not None and ev.fields["state"] == "ok"


async def test_rounds_run_by_themselves(tmp_path: Path) -> None:
    cfg = make_config(sources=("proc",), state_dir=tmp_path, canary_interval=0.2,
                      canary_deadline=0.5)  # fmt: skip
    s = Service(cfg)
    await s.start()
    try:
        assert s.canary is not None
        for _ in range(50):
            if s.canary.stats.rounds >= 2:
                break
            await asyncio.sleep(0.05)
        assert s.canary.stats.rounds >= 2
        assert s.canary.stats.verdicts["proc"].misses == 0
    finally:
        await s.stop()
    assert s.canary.stats.helper_failures == 0


async def test_node_and_healthz_show_the_canary_verdict(svc: Service) -> None:

    from app.api.app import make_app
    from tests.spec import call

    assert svc.canary is not None
    mutable = svc.sources[1]
    assert isinstance(mutable, MutableProc) and mutable.gate is not None
    async with api_client(make_app(svc, manage=False)) as client:
        await svc.canary.check_once()
        _, node = await call(client, "GET", "/v1/node")
        assert node["sources"]["proc"]["state"] == "ok"
        assert node["sources"]["proc"]["counters"]["canary_passes"] >= 1
        assert "canary_latency_p50_us" in node["sources"]["proc"]["counters"]
        mutable.gate.muted = True
        await svc.canary.check_once()
        resp, health = await call(client, "GET", "/healthz")
        assert resp.status == 503 and health["sources"]["audit"] == "degraded"
        _, node = await call(client, "GET", "/v1/node")
        assert node["sources"]["audit"]["state"] == "degraded"
        assert "canary" in node["sources"]["audit"]["info"]
