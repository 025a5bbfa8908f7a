"""Watches: matching, incremental evaluation from the journal, `watch` events."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from app.api.lifejson import LifeEncoder
from app.core.config import Config, load_config
from app.core.service import Service
from app.core.watches import NOT_RUNNING, RUNNING, WatchEngine, WatchSpec
from app.sources.observations import Exec, Exit, Fork
from tests.helpers import exec_done, start_ticks
from tests.scripted import ScriptedSource

FAKE = 4_000_000  # pids above any this machine hands out: scripted lives never meet real ones


def watch_events(service: Service, name: str) -> list[dict[str, Any]]:
    evs = service.journal.since(0) or []
    enc = LifeEncoder.for_node(service.node)
    return [e.to_dict(enc) for e in evs if e.type == "watch" and e.fields
            and e.fields.get("watch") == name]  # fmt: skip


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def scripted() -> Any:
    src = ScriptedSource()
    service = Service(Config(sources=(), state_dir=None), sources=[src])
    await service.start()
    yield service, src
    await service.stop()


def test_spec_needs_a_criterion_and_sane_bounds() -> None:
    with pytest.raises(ValidationError, match="at least one"):
        WatchSpec()
    with pytest.raises(ValidationError, match="max"):
        WatchSpec(comm="x", min=3, max=2)
    with pytest.raises(ValidationError, match="regular expression"):
        WatchSpec(argv="(")
    with pytest.raises(ValidationError, match=r"RE2 regular expression.*backreferences"):
        WatchSpec(argv=r"(a)\1")


def test_a_backtracking_argv_pattern_cannot_stall_the_daemon() -> None:
    # With `re`, (a+)+$ on 40 a's and a b backtracks about 2**40 times, holding the GIL; RE2
    # answers at once. A child process with a deadline makes a regression fail, not hang.
    code = (
        "from app.core.life import Life; from app.core.watches import Matcher, WatchSpec; "
        "life = Life(4242, 1, 1, 'x', 4, argv=('x', 'a' * 40 + 'b')).snapshot(); "
        "print(Matcher(WatchSpec(argv=r'(a+)+$'))(life, lambda _: None))"
    )
    root = Path(__file__).parent.parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=20, check=True).stdout  # fmt: skip
    assert out.strip() == "False"


def test_config_takes_watches_from_file_and_env(tmp_path: Path) -> None:
    f = tmp_path / "lifewatch.toml"
    f.write_text('token = "s3cret"\n[watches.ntpd]\nexe = "/usr/sbin/ntpd"\nmax = 1\n')
    cfg = load_config(f, {}, {})
    assert cfg.token == "s3cret"
    assert cfg.watches["ntpd"] == WatchSpec(exe="/usr/sbin/ntpd", max=1)
    cfg = load_config(None, {"LIFEWATCH_WATCHES": '{"sh": {"comm": "sh"}}'}, {})
    assert cfg.watches["sh"].comm == "sh"


async def test_running_then_not_running_from_scripted_events(scripted: Any) -> None:
    service, src = scripted
    engine: WatchEngine = service.watches
    watch, created = engine.define("daemon", WatchSpec(exe="/usr/sbin/fakedaemon"))
    assert created and watch.state == NOT_RUNNING
    t = 1_000.0
    src.push(Fork("script", FAKE, 1, t, start_ticks=500))
    src.push(Exec("script", FAKE, t + 0.1, exe="/usr/sbin/fakedaemon", argv=("fakedaemon", "-n")))
    await settle()
    assert watch.state == RUNNING and watch.count == 1 and watch.since == t + 0.1
    assert engine.view(watch)["lives"][0]["pid"] == FAKE
    src.push(Exit("script", FAKE, t + 2, signal=9, start_ticks=500))
    await settle()
    assert watch.state == NOT_RUNNING and watch.since == t + 2
    evs = watch_events(service, "daemon")
    assert [(e["change"], e["state"]) for e in evs] == [
        ("defined", NOT_RUNNING),
        ("joined", RUNNING),
        ("left", NOT_RUNNING),
    ]
    assert evs[2]["life"]["exit"]["signal"] == 9  # the event names the life that left


async def test_exec_into_another_program_leaves_and_bounds_set_ok(scripted: Any) -> None:
    service, src = scripted
    watch, _ = service.watches.define("two", WatchSpec(argv=r"--role=worker\b", min=2, max=2))
    for i in range(3):
        src.push(Fork("script", FAKE + i, 1, 1.0, start_ticks=600 + i))
        src.push(Exec("script", FAKE + i, 1.0, exe="/bin/w", argv=("w", "--role=worker")))
    await settle()
    assert watch.count == 3 and not watch.ok  # above max
    src.push(Exec("script", FAKE, 2.0, exe="/bin/other", argv=("other",)))
    await settle()
    assert watch.count == 2 and watch.ok and watch.state == RUNNING


async def test_parent_uid_and_canary_criteria(scripted: Any) -> None:
    service, src = scripted
    kids, _ = service.watches.define("kids", WatchSpec(parent="super*", uid=1000))
    src.push(Fork("script", FAKE, 1, 1.0, start_ticks=700))
    src.push(Exec("script", FAKE, 1.0, exe="/usr/bin/supervisor", argv=("supervisor",),
                  comm="supervisor"))  # fmt: skip
    src.push(Fork("script", FAKE + 1, FAKE, 1.1, start_ticks=701, uid=1000))
    src.push(Fork("script", FAKE + 2, FAKE, 1.1, start_ticks=702, uid=0))
    await settle()
    assert [k[0] for k in kids.lives] == [FAKE + 1]
    service.registry.alive[FAKE + 1].canary = True
    src.push(Exec("script", FAKE + 1, 1.2, exe="/bin/x", argv=("x",)))
    await settle()
    assert kids.count == 0  # canary lives are not the operator's programs


async def test_resync_reevaluates_and_redefine_and_remove(scripted: Any) -> None:
    service, src = scripted
    watch, _ = service.watches.define("w", WatchSpec(comm="fakeprog"))
    src.push(Fork("script", FAKE, 1, 1.0, start_ticks=800))
    src.push(Exec("script", FAKE, 1.0, exe="/x", argv=("x",), comm="fakeprog"))
    await settle()
    assert watch.count == 1
    # A resync finds FAKE gone from /proc: died(cause=resync) then `resync`; the watch follows.
    service.tracker.resync("test")
    await settle()
    assert watch.count == 0
    same, created = service.watches.define("w", WatchSpec(comm="fakeprog"))
    assert same is watch and not created
    service.watches.define("w", WatchSpec(comm="other"))
    assert service.watches.remove("w") is not None
    changes = [e["change"] for e in watch_events(service, "w")]
    assert changes == ["defined", "joined", "left", "redefined", "removed"]


async def test_configured_watch_starts_in_its_true_state() -> None:
    me = WatchSpec(exe=os.path.realpath(sys.executable))
    service = Service(Config(sources=(), state_dir=None, watches={"me": me}), sources=[])
    await service.start()
    try:
        watch = service.watches.watches["me"]
        assert watch.state == RUNNING
        assert os.getpid() in [k[0] for k in watch.lives]
    finally:
        await service.stop()


async def test_real_program_killed_goes_not_running(scripted: Any) -> None:
    """A real process, reported by a scripted source (the kernel sources have their own
    end-to-end test): the watch sees its life from /proc, then its death."""
    service, src = scripted
    tag = f"lifewatch-watch-test-{os.getpid()}"
    watch, _ = service.watches.define("sleeper", WatchSpec(argv=tag))
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", tag])
    try:
        # The start from /proc: without it a stale life of a reused pid could be taken
        # for this one (the registry is fed by this script only).
        exec_done(proc.pid)
        ticks = start_ticks(proc.pid)
        src.push(Fork("script", proc.pid, os.getpid(), 1.0, start_ticks=ticks))
        src.push(Exec("script", proc.pid, 1.0))  # exe/argv read from /proc
        await settle()
        assert watch.state == RUNNING
        proc.kill()
        proc.wait()
        src.push(Exit("script", proc.pid, 2.0, signal=9, start_ticks=ticks))
        await settle()
        assert watch.state == NOT_RUNNING
    finally:
        proc.kill()
        proc.wait()
    states = [e["state"] for e in watch_events(service, "sleeper")]
    assert states == [NOT_RUNNING, RUNNING, NOT_RUNNING]


async def test_engine_follows_the_journal_only_while_it_has_watches(scripted: Any) -> None:
    service, src = scripted
    engine: WatchEngine = service.watches
    assert engine.subscribed == 0  # no watches configured: no cost per event
    watch, _ = engine.define("w", WatchSpec(comm="fakeprog"))
    assert engine.subscribed == 1
    src.push(Fork("script", FAKE, 1, 1.0, start_ticks=990))
    src.push(Exec("script", FAKE, 1.0, exe="/x", argv=("x",), comm="fakeprog"))
    await settle()
    assert watch.count == 1
    engine.remove("w")
    assert engine.subscribed == 0
    watch, _ = engine.define("w", WatchSpec(comm="fakeprog"))
    assert watch.count == 1  # evaluated against the registry when defined again
    src.push(Exit("script", FAKE, 2.0, code=0, start_ticks=990))
    await settle()
    assert watch.count == 0 and engine.subscribed == 1
