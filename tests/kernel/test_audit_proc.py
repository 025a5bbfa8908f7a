"""Audit and the proc connector together on the live kernel: one life and one event per
transition, audit's argv with the connector's signal; and the canary turning audit
`degraded` when another tool disables audit, while the connector keeps reporting deaths."""

from __future__ import annotations

import asyncio
import collections
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.core.config import Config
from app.core.service import Service
from tests.helpers import died, read_until
from tests.kernel.audit_kernel import KEY, auditctl, kernel_audit_state, started, wait_unicast_free


@pytest.fixture
async def both(tmp_path: Any) -> AsyncIterator[Service]:
    async for _found in kernel_audit_state():  # restores the kernel's audit state after
        await wait_unicast_free()
        cfg = Config(sources=("audit", "proc"), state_dir=tmp_path, audit_key=KEY,
                     audit_mode="unicast", audit_status_interval=0.2, canary_interval=60,
                     canary_deadline=1.0)  # fmt: skip
        svc = await started(Service(cfg))
        try:
            yield svc
        finally:
            await svc.stop()


def events_of(svc: Service, pid: int) -> list[str]:
    return [e.type for e in svc.journal.since(0) or [] if e.life and e.life.pid == pid]


async def test_one_life_one_event_per_transition_from_both_sources(both: Service) -> None:
    sub = both.journal.subscribe(lambda e: e.type == "died", 1000)
    # The daemon's own forks are not audited (fact 3): the lives come from a shell child.
    out = subprocess.run(
        ["sh", "-c", "sh -c 'exit 3' & echo $!; wait; sleep 30 & echo $!; "
         "sleep 0.2; kill -9 $!; wait"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    exited, killed = (int(x) for x in out.stdout.split())
    await read_until(sub, died(killed))
    await asyncio.sleep(0.5)  # let the slower source (audit) tell its part
    for pid in (exited, killed):
        assert events_of(both, pid).count("born") == 1, events_of(both, pid)
        assert events_of(both, pid).count("died") == 1, events_of(both, pid)
        assert events_of(both, pid)[0] == "born"
    deaths = collections.Counter(
        (e.life.pid, e.life.start_ticks) for e in both.journal.since(0) or []
        if e.type == "died" and e.life is not None
    )  # fmt: skip
    assert max(deaths.values()) == 1
    a = next(e.life for e in both.journal.since(0) or [] if e.type == "died" and e.life
         and e.life.pid == exited)  # fmt: skip
    life = both.registry.find(exited, a.start_ticks)
    assert life is not None and life.exit is not None and life.exit.code == 3
    assert life.sources & 6 == 6  # seen by audit and by the connector
    assert life.argv == ("sh", "-c", "exit 3")
    k = next(e.life for e in both.journal.since(0) or [] if e.type == "died" and e.life
         and e.life.pid == killed)  # fmt: skip
    klife = both.registry.find(killed, k.start_ticks)
    assert klife is not None and klife.exit is not None and klife.exit.signal == 9
    assert klife.argv == ("sleep", "30") and klife.sources & 6 == 6


async def test_audit_disabled_behind_our_back_turns_degraded_and_proc_keeps_going(
    both: Service,
) -> None:
    assert both.canary is not None
    assert await both.canary.check_once() == {"audit": True, "proc": True}
    auditctl("-e", "0")  # another tool disables audit
    try:
        got = await both.canary.check_once()
        assert got == {"audit": False, "proc": True}
        audit = next(s for s in both.sources if s.name == "audit")
        assert both.source_health(audit).state == "degraded"
        sub = both.journal.subscribe(lambda e: e.type == "died", 100)
        p = subprocess.Popen(["sleep", "30"])
        await asyncio.sleep(0.05)
        p.kill()
        ev = (await read_until(sub, died(p.pid)))[-1]  # other deaths on the node come too
        assert ev.life is not None and ev.life.exit is not None and ev.life.exit.signal == 9
        p.wait()
    finally:
        auditctl("-e", "1")
    assert await both.canary.check_once() == {"audit": True, "proc": True}
    # The canary's verdict is ok again (the audit source may keep its own `degraded` for
    # the disable it saw itself: that state is the audit source's to clear).
    assert both.canary.stats.verdicts["audit"].state == "ok"


async def test_audits_reports_confirmed_against_the_connectors_keep_every_life_whole(
    both: Service,
) -> None:
    """With both sources, audit's fork and exit_group records that the connector told
    already are confirmed in the compiled reader (app/netlink/_batch.c, "confirmations"):
    each life still has one birth, one death, its status, and both sources; and the canary
    still hears audit (its lives are confirmed the same way)."""
    audit = next(s for s in both.sources if s.name == "audit")
    proc = next(s for s in both.sources if s.name == "proc")
    table = getattr(audit, "confirm", None)
    assert table is not None and table is getattr(proc, "confirm", None)  # one, shared
    before = dict(both.source_health(audit).counters)
    first = both.journal.last_cursor
    out = subprocess.run(
        ["sh", "-c", "for i in $(seq 40); do (exit 3) & echo $!; done; wait"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pids = [int(x) for x in out.stdout.split()]
    await asyncio.sleep(0.6)  # audit's records come through kauditd
    for pid in pids:
        assert events_of(both, pid) == ["born", "died"], events_of(both, pid)
        ev = next(e for e in both.journal.since(0) or [] if e.type == "died" and e.life
                  and e.life.pid == pid)  # fmt: skip
        assert ev.life is not None
        life = both.registry.find(pid, ev.life.start_ticks)
        assert life is not None and life.exit is not None and life.exit.code == 3
        assert life.sources & 6 == 6, (pid, life.sources)
    after = both.source_health(audit).counters
    confirmed = {k: after[k] - before.get(k, 0) for k in ("confirmed_forks", "confirmed_exits")}
    # Each of the 40 is told by both; most of audit's reports find the connector's first.
    assert confirmed["confirmed_forks"] > 0 and confirmed["confirmed_exits"] > 0, confirmed
    assert both.tracker.counters["confirmed"] > 0
    # Serials counted from the EOEs: no hole, no gap.
    assert after["gaps"] == before["gaps"] and after["lost_serials"] == before["lost_serials"]
    assert not [e for e in both.journal.since(first) or [] if e.type == "gap"]
    assert both.canary is not None
    assert await both.canary.check_once() == {"audit": True, "proc": True}
