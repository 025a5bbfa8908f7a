"""Watches and metrics fed by the real kernel sources (root): a watched program killed by
the test goes `running` -> `not running`; /metrics counters move when the test forks."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.app import make_app
from app.core.service import Service
from app.core.watches import NOT_RUNNING, RUNNING, WatchSpec
from tests.helpers import api_client, make_config, wait_until

SOURCES = ("proc", "audit")


@pytest.fixture(params=SOURCES)
async def svc(request: Any, tmp_path: Path) -> AsyncIterator[Service]:
    s = Service(make_config(sources=(request.param,), state_dir=tmp_path))
    await s.start()
    yield s
    await s.stop()


async def test_watch_follows_a_real_program_to_its_death(svc: Service) -> None:
    source = svc.sources[0].name
    tag = f"lifewatch-kernel-watch-{os.getpid()}"
    watch, _ = svc.watches.define("prog", WatchSpec(argv=tag))
    assert watch.state == NOT_RUNNING
    prog = [sys.executable, "-c", "import sys; sys.stdin.read()", tag]
    proc = subprocess.Popen(prog, stdin=subprocess.PIPE)
    try:
        await wait_until(lambda: watch.state == RUNNING)
        assert [k[0] for k in watch.lives] == [proc.pid]
    finally:
        if source == "audit":
            # A killed process makes no exit record (design.md fact 4): audit alone sees
            # only a program that ends by itself. The proc connector sees the SIGKILL.
            assert proc.stdin is not None
            proc.stdin.close()
        else:
            proc.kill()
        proc.wait()
    await wait_until(lambda: watch.state == NOT_RUNNING)
    evs = [e for e in svc.journal.since(0) or [] if e.type == "watch" and e.fields
           and e.fields["watch"] == "prog"]  # fmt: skip
    assert [e.fields["state"] for e in evs if e.fields] == [NOT_RUNNING, RUNNING, NOT_RUNNING]
    last = evs[-1]
    assert last.life is not None and last.life.pid == proc.pid and last.life.exit is not None
    if source == "audit":
        assert last.life.exit.code == 0
    else:
        assert last.life.exit.signal == 9


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


async def test_metrics_move_when_the_test_forks(svc: Service) -> None:
    async with api_client(make_app(svc, manage=False)) as c:
        source = svc.sources[0].name
        born = ("lifewatch_source_events_total", frozenset({("type", "born"),
                                                           ("source", source)}))  # fmt: skip
        died = ("lifewatch_events_total", frozenset({("type", "died")}))
        before = samples(await (await c.get("/metrics")).text())
        # From a shell: in unicast mode the daemon's own forks are never audited (fact 3).
        subprocess.run(["sh", "-c", "for i in $(seq 20); do /bin/true; done"], check=True)
        await asyncio.sleep(0.3)
        after = samples(await (await c.get("/metrics")).text())
    assert after.get(born, 0) - before.get(born, 0) >= 20
    assert after.get(died, 0) - before.get(died, 0) >= 20
    assert after[("lifewatch_source_up", frozenset({("source", source)}))] == 1
