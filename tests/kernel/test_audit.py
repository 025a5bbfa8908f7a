"""The audit source on the live kernel (root; in CI a skip is a failure): the whole pipeline,
Service -> AuditSource -> tracker -> registry/journal, driven by a helper process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.api.prometheus import LifewatchCollector
from app.argv import ARGV_MAX, cap_argv
from app.core.config import Config
from app.core.life import SourceSet
from app.core.service import Service
from app.netlink.audit_proto import AUDIT_NEVER, AUDIT_PID
from app.sources.audit import AuditSource
from tests.helpers import wait_until
from tests.kernel.audit_kernel import (
    KEY,
    auditctl,
    auditd_running,
    kernel_audit_state,
    ours,
    rules,
    run_helper,
    started,
    status,
    wait_unicast_free,
)


@pytest.fixture
async def kernel_audit() -> AsyncIterator[Any]:
    async for found in kernel_audit_state():
        yield found


@pytest.fixture
def auditd(tmp_path: Path) -> Iterator[Path]:
    yield from auditd_running(tmp_path)


def config(**kw: Any) -> Config:
    base: dict[str, Any] = {
        "sources": ("audit",), "state_dir": None, "audit_key": KEY, "audit_status_interval": 0.2,
    }  # fmt: skip
    base.update(kw)
    return Config(**base)


@pytest.fixture
async def unicast(kernel_audit: Any) -> AsyncIterator[Service]:
    await wait_unicast_free()
    svc = await started(Service(config(audit_mode="unicast")))
    try:
        yield svc
    finally:
        await svc.stop()


async def check_lives(svc: Service, truth: dict[str, Any], exact: bool) -> None:
    """Every life of the helper's workload is in the registry, right, and dead with its code."""
    reg = svc.registry

    def all_dead() -> bool:
        found = [reg.find(x["pid"], x["start_ticks"]) for x in truth["lives"]]
        return all(life is not None and not life.alive for life in found)

    with contextlib.suppress(AssertionError):  # the checks below say which life is wrong
        await wait_until(all_dead)
    for x in truth["lives"]:
        life = reg.find(x["pid"], x["start_ticks"])
        assert life is not None, x["kind"]
        if exact:
            assert life.start_ticks == x["start_ticks"] and life.start_slack == 0, x["kind"]
        else:  # derived from the audit stamp when reaped before capture: +-1 tick (fact 11)
            assert abs(life.start_ticks - x["start_ticks"]) <= life.start_slack, x["kind"]
        assert life.ppid == truth["helper"], x["kind"]
        assert life.exit is not None and life.exit.code == x["code"], x["kind"]
        assert life.sources & SourceSet.AUDIT, x["kind"]
        if x["argv"] is not None:
            # the 9000-byte argument of `long-arg` is cut at the cap, and says so
            want = cap_argv([a.encode() for a in x["argv"]], ARGV_MAX)
            assert life.argv == want, x["kind"]
            assert life.exe == x["exe"], x["kind"]
    for tid in truth["threads"]:  # a thread is not a life
        assert [x for x in reg.lives() if x.pid == tid and x.born_at is not None] == []
    # the shell's pipeline: its two children, with the shell as parent
    sh = next(x for x in truth["lives"] if x["kind"] == "pipeline")
    sh_life = reg.find(sh["pid"], sh["start_ticks"])
    assert sh_life is not None
    # (the shell reaps them at once: their starts may be derived, one tick early)
    kids = {life.exe for life in reg.lives() if life.ppid == sh["pid"]
            and life.start_ticks >= sh_life.start_ticks - 1}  # fmt: skip
    assert {"/usr/bin/echo", "/usr/bin/cat"} <= kids


async def test_unicast_lives_exact_while_children_linger(unicast: Service) -> None:
    source = unicast.sources[0]
    info = source.health().info
    assert (info["mode"], info["audit_pid"]) == ("unicast", str(os.getpid()))
    truth = await run_helper("--linger", "0.3")
    await check_lives(unicast, truth, exact=True)
    born = [e for e in unicast.journal.since(0) or [] if e.type == "born"]
    assert {x["pid"] for x in truth["lives"]} <= {e.life.pid for e in born if e.life}
    assert source.health().state == "ok"


async def test_unicast_lives_reaped_at_once(unicast: Service) -> None:
    truth = await run_helper()
    await check_lives(unicast, truth, exact=False)
    assert unicast.sources[0].health().counters["gaps"] == 0


async def test_daemon_own_forks_are_not_audited_in_unicast(unicast: Service) -> None:
    """design.md fact 3: the registered audit daemon's syscalls are never audited."""
    before = unicast.sources[0].health().counters["forks"]
    child = subprocess.Popen(["/bin/sleep", "0.3"])  # forked by the daemon itself
    truth = await run_helper()  # forked by a helper: seen
    child.wait()
    counters = unicast.sources[0].health().counters
    assert counters["forks"] - before >= len(truth["lives"])
    life = next((x for x in unicast.registry.lives() if x.pid == child.pid), None)
    # its exec was audited (the child is not the daemon) but its birth came from the exec
    # (a life learned late from /proc), never from a fork record
    assert life is None or life.born_at is None


async def test_sigkill_leaves_no_exit_record(unicast: Service) -> None:
    """design.md fact 4: a death by signal makes no exit_group record."""
    code = "import os,time\np=os.fork()\nif p==0: time.sleep(30)\n" \
           "time.sleep(0.2); os.kill(p,9); os.waitpid(p,0); print(p)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pid = int(out.stdout)
    await asyncio.sleep(0.5)
    life = unicast.registry.holder(pid)
    assert life is not None and life.alive  # audit alone never learns of this death
    assert life.exit is None


async def test_stop_removes_rules_restores_and_releases(kernel_audit: Any) -> None:
    await wait_unicast_free()
    found = await status()
    svc = await started(Service(config(audit_mode="auto")))
    info = svc.sources[0].health().info
    assert info["mode"] == "unicast" and "no audit daemon" in info["mode_reason"]
    assert KEY in auditctl("-l")
    assert (await status()).pid == os.getpid()
    # /metrics carries the kernel's figures under the keys the audit source reports them by
    samples = [s for m in LifewatchCollector(svc).collect() for s in m.samples]
    kernel = {
        s.name: s.value
        for s in samples
        if s.name.startswith("lifewatch_kernel_") and s.labels["source"] == "audit"
    }
    assert kernel.keys() == {"lifewatch_kernel_lost_total", "lifewatch_kernel_backlog",
                             "lifewatch_kernel_backlog_limit"}  # fmt: skip
    assert kernel["lifewatch_kernel_backlog_limit"] == (await status()).backlog_limit
    await svc.stop()
    assert KEY not in auditctl("-l")
    after = await status()
    assert after.pid == 0
    assert (after.enabled, after.backlog_limit, after.backlog_wait_time) == (
        found.enabled, found.backlog_limit, found.backlog_wait_time,
    )  # fmt: skip
    assert svc.sources[0].health().state == "stopped"


@pytest.mark.root_test_side("Debian's auditd runs only as root")
async def test_multicast_next_to_auditd(kernel_audit: Any, auditd: Path) -> None:
    theirs = [r for r in await rules() if not ours(r)]
    svc = await started(Service(config(audit_mode="auto")))
    try:
        info = svc.sources[0].health().info
        assert info["mode"] == "multicast" and "held by pid" in info["mode_reason"]
        # the multicast reader excludes itself (fact 7) with a `never` rule on its pid
        mine = [r for r in await rules() if ours(r)]
        assert any(r.action == AUDIT_NEVER and (AUDIT_PID, 0x40000000, os.getpid())
                   in r.conditions for r in mine)  # fmt: skip
        truth = await run_helper("--linger", "0.3")
        await check_lives(svc, truth, exact=True)
        assert svc.sources[0].health().counters["gaps"] == 0
    finally:
        await svc.stop()
    # auditd kept working: its own rule's records about the helper's execs are in its log
    helper_exec = f"pid={truth['lives'][1]['pid']} "
    await wait_until(lambda: helper_exec in auditd.read_text(), 5.0)
    # ... and its rules and its audit pid are untouched by lifewatch's stop
    assert [r for r in await rules() if not ours(r)] == theirs
    assert [r for r in await rules() if ours(r)] == []
    assert (await status()).pid != 0


async def test_forced_loss_gives_gap_resync_and_a_right_registry(kernel_audit: Any) -> None:
    await wait_unicast_free()
    svc = Service(config(audit_mode="unicast", audit_backlog_limit=2, audit_backlog_wait_time=0,
                         audit_rcvbuf=65536))  # fmt: skip
    svc = await started(svc)
    try:
        source = svc.sources[0]
        assert isinstance(source, AuditSource)
        lost0 = (await status()).lost
        code = (
            "import os\npids=[]\nfor i in range(3000):\n p=os.fork()\n if p==0: os._exit(3)\n"
            " pids.append(p)\nfor p in pids: os.waitpid(p,0)\nprint(' '.join(map(str,pids)))"
        )
        # pause our reader so the kernel queue fills: records beyond backlog_limit are lost
        assert source._sock is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(source._sock.fileno())
        t0 = time.time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate()
        loop.add_reader(source._sock.fileno(), source._on_readable)
        pids = [int(p) for p in out.split()]
        assert (await status()).lost > lost0
        journal = svc.journal

        def repaired() -> bool:
            types = [e.type for e in journal.since(0) or [] if e.at >= t0 - 1]
            return "gap" in types and "resync" in types

        await wait_until(repaired, 10.0)
        gaps = [e for e in journal.since(0) or [] if e.type == "gap"]
        assert any(e.fields and e.fields["reason"] == "kernel_lost" for e in gaps)
        assert source.health().state == "degraded"
        assert source.health().counters["kernel_lost"] > lost0
        # after the resync, none of the 3000 dead children is alive in the registry
        await asyncio.sleep(0.5)
        alive = svc.registry.alive
        assert [p for p in pids if p in alive and not Path(f"/proc/{p}").exists()] == []
    finally:
        await svc.stop()


async def test_multicast_overrun_is_a_gap(kernel_audit: Any) -> None:
    """A multicast reader is never waited for: when its socket overruns, the kernel drops
    the records for it and the next read fails with ENOBUFS. That must be a `gap` (and the
    records dropped leave serial holes too), then a resync."""
    svc = await started(Service(config(audit_mode="multicast", audit_rcvbuf=65536)))
    try:
        source: Any = svc.sources[0]
        assert source.health().info["mode"] == "multicast"
        loop = asyncio.get_running_loop()
        loop.remove_reader(source._sock.fileno())  # stop reading: the socket fills
        t0 = time.time()
        code = (
            "import os\nfor i in range(1500):\n p=os.fork()\n if p==0: os._exit(0)\n"
            " os.waitpid(p,0)"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
        await proc.wait()
        loop.add_reader(source._sock.fileno(), source._on_readable)

        def gap_and_resync() -> bool:
            types = [e.type for e in svc.journal.since(0) or [] if e.at >= t0 - 1]
            return "gap" in types and "resync" in types

        await wait_until(gap_and_resync, 10.0)
        reasons = {e.fields["reason"] for e in svc.journal.since(0) or []
                   if e.type == "gap" and e.fields}  # fmt: skip
        assert "enobufs" in reasons
        counters = source.health().counters
        assert counters["enobufs"] >= 1
        assert source.health().state == "degraded"
    finally:
        await svc.stop()


@pytest.mark.root_test_side("Debian's auditd runs only as root")
async def test_unicast_never_forces_out_a_running_daemon(kernel_audit: Any, auditd: Path) -> None:
    """Only one process can hold the audit pid: a second gets EEXIST. lifewatch configured
    for unicast then fails (visibly) and leaves auditd, its pid and its rules alone."""
    before = await status()
    theirs = [r for r in await rules() if not ours(r)]
    svc = Service(config(audit_mode="unicast"))
    await svc.start()  # a source that cannot start is reported, not fatal
    try:
        health = svc.sources[0].health()
        assert health.state == "failed"
        assert "EEXIST" in health.reason or "File exists" in health.reason
    finally:
        await svc.stop()
    assert (await status()).pid == before.pid
    assert [r for r in await rules() if not ours(r)] == theirs
    assert [r for r in await rules() if ours(r)] == []


async def test_rules_are_owned_per_run(kernel_audit: Any) -> None:
    """Each run tags its rules `<key>:<pid>`: a second lifewatch never removes the first's
    rules, and rules of a run that died are removed at the next start."""
    from app.netlink.audit_control import AuditControl
    from app.sources.audit_rules import lifewatch_rules

    proc = subprocess.Popen(["/bin/true"])  # its pid is gone afterwards
    proc.wait()
    dead = proc.pid
    c = AuditControl()
    try:
        stale = lifewatch_rules(f"{KEY}:{dead}", [0xC000003E])[0]
        other = lifewatch_rules(f"{KEY}:1", [0xC000003E])[0]  # pid 1 lives: another run
        await c.add_rule(stale)
        await c.add_rule(other)
        await wait_unicast_free()
        svc = await started(Service(config(audit_mode="unicast")))
        keys = {r.key for r in await rules()}
        assert stale.key not in keys and other.key in keys
        assert f"{KEY}:{os.getpid()}" in keys
        await svc.stop()
        keys = {r.key for r in await rules()}
        assert other.key in keys and f"{KEY}:{os.getpid()}" not in keys
        await c.delete_rule(other)
    finally:
        c.close()
