"""Bounded memory whatever processes do: argv cap, history in bytes, answers in bytes, batch
checks in slices (issue 9, Must have 5)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from app import procfs
from app.api.app import make_app
from app.api.keys import ANSWERS
from app.api.lives import CHECK_SLICE
from app.argv import CutArgv, cap_argv, is_cut, split_cmdline, utf8_prefix
from app.core.identity import NodeIdentity, TickClock
from app.core.journal import Journal
from app.core.life import Life, SourceSet, exit_of, intern_argv, retained_bytes
from app.core.registry import Registry
from app.core.service import Service
from app.netlink.audit_records import execve_argv, proctitle_argv
from app.sources.observations import Exec, Fork, Observation
from tests.helpers import api_client, make_config
from tests.scripted import ScriptedSource
from tests.spec import call

Client = TestClient[Any, Any]
P = 4_000_001  # far above any pid of the machine: /proc never answers for it


# -- the argv cap ----------------------------------------------------------------------------
def size(argv: tuple[str, ...]) -> int:
    return sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in argv)


def test_whole_arguments_kept_while_they_fit() -> None:
    args = [b"arg%04d" % i for i in range(1000)]  # 8 bytes each with the NUL
    got = cap_argv(args, 100)
    assert is_cut(got) and got == CutArgv([*(f"arg{i:04d}" for i in range(12)), "arg"])
    assert size(got) == 100


def test_one_huge_argument_is_cut_to_the_cap() -> None:
    got = cap_argv([b"sleep", b"x" * (128 << 10)], 4096)
    assert is_cut(got) and got[0] == "sleep" and size(got) == 4096


def test_exactly_at_the_cap_is_not_cut() -> None:
    got = split_cmdline(b"sleep\x00600\x00", 10)
    assert got == ("sleep", "600") and not is_cut(got)
    one_more = split_cmdline(b"sleep\x006000\x00", 10)
    assert is_cut(one_more) and one_more == CutArgv(("sleep", "600"))


def test_the_cut_never_splits_a_utf8_character() -> None:
    euro = "€".encode()  # 3 bytes
    for cap in range(1, 10):
        got = cap_argv([euro * 3], cap)
        assert got in (CutArgv(), CutArgv(("€" * ((cap - 1) // 3),)))
        assert "\udce2" not in "".join(got)  # no stray lead byte
    assert utf8_prefix("aé".encode(), 2) == b"a"


def test_bytes_that_are_not_utf8_are_kept_and_cut_like_any_byte() -> None:
    got = split_cmdline(b"sleep\xff\xfe\x00\xff\xfe\xfd\x00", 10)
    assert got == CutArgv(("sleep\udcff\udcfe", "\udcff"))
    assert size(got) == 10


def test_a_cut_argv_is_not_equal_to_the_whole_one_and_is_not_shared() -> None:
    cut = CutArgv(("a", "b"))
    whole = ("a", "b")
    assert cut != whole and whole != cut and cut == CutArgv(("a", "b"))
    assert is_cut(intern_argv(cut))
    assert intern_argv(("sleep", "600")) is intern_argv(tuple(["sleep", "600"]))


def test_cmdline_read_stops_at_the_cap(tmp_path: Path) -> None:
    # A process may have 12 x 128 KiB of argv: only cap + 1 bytes are read.
    big = tmp_path / "cmdline"
    big.write_bytes((b"y" * (128 << 10) + b"\0") * 12)
    fd = os.open(big, os.O_RDONLY)
    try:
        data = procfs.read_upto(fd, 4097)
    finally:
        os.close(fd)
    assert len(data) == 4097
    pid = tmp_path / "77"
    pid.mkdir()
    (pid / "cmdline").write_bytes(big.read_bytes())
    (pid / "stat").write_bytes(b"77 (y) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 500 0 0")
    info = procfs.read_proc(77, proc=tmp_path, argv_max=1000)
    assert is_cut(info.argv) and size(info.argv) == 1000


def test_audit_argv_is_capped_too() -> None:
    body = b'argc=3 a0="ls" a1="-l" a2="' + b"z" * 500 + b'"'
    got = execve_argv([body], 100)
    assert got is not None and is_cut(got) and size(got) == 100
    assert execve_argv([body], 1000) == ("ls", "-l", "z" * 500)
    title = proctitle_argv(b"6C73002D6C", 3)  # "ls\0-l"
    assert title == CutArgv(("ls",))


# -- argv_truncated in the API --------------------------------------------------------------
async def scripted(script: list[Observation], **cfg: object) -> Service:
    svc = Service(make_config(**cfg), sources=[ScriptedSource("script", script)])
    await svc.start()
    for _ in range(len(script) + 2):
        await asyncio.sleep(0)
    return svc


@pytest.fixture
async def big_argv() -> AsyncIterator[Service]:
    argv = cap_argv([b"x" * 5000], 4096)
    svc = await scripted([
        Fork("script", P, 1, 10.0, start_ticks=500),
        Exec("script", P, 10.1, exe="/usr/bin/x", argv=argv, comm="x"),
        Fork("script", P + 1, 1, 10.2, start_ticks=501),
        Exec("script", P + 1, 10.3, exe="/usr/bin/y", argv=("y",), comm="y"),
    ])  # fmt: skip
    yield svc
    await svc.stop()


async def test_argv_truncated_in_the_life_json(big_argv: Service) -> None:
    async with api_client(make_app(big_argv, manage=False)) as client:
        _, life = await call(client, "GET", f"/v1/lives/{P}")  # validated against the spec
        assert life["argv_truncated"] is True and len(life["argv"][0]) == 4095
        _, other = await call(client, "GET", f"/v1/lives/{P + 1}")
        assert other["argv_truncated"] is False


# -- history in bytes -----------------------------------------------------------------------
def test_history_evicts_the_oldest_dead_lives_past_its_bytes() -> None:
    node = NodeIdentity("vm", "boot", TickClock(1_700_000_000, 100), "kernel")
    reg = Registry(node, Journal(16), history=1000, history_bytes=20_000)
    argv = ("x" * 3000,)
    for i in range(20):
        life = Life(1000 + i, 5000 + i, 1, "x", SourceSet.SCRIPT, argv=argv)
        reg.born(life, SourceSet.SCRIPT)
        reg.died(life, exit_of(0, None), 1.0, "exit", SourceSet.SCRIPT)
    one = retained_bytes(life)
    assert one > 3000
    assert len(reg.dead) == 20_000 // one and reg.evicted == 20 - len(reg.dead)
    assert reg.dead_bytes <= 20_000
    assert reg.find(1019, 5019) is not None and reg.find(1000, 5000) is None  # oldest first


# -- /v1/events and /v1/lives bounded in bytes ------------------------------------------------
async def test_event_pages_stop_at_their_byte_budget_and_continue() -> None:
    script: list[Observation] = []
    for i in range(60):  # each exec event carries ~4 KiB of argv
        script.append(Fork("script", P + i, 1, 10.0 + i, start_ticks=500 + i))
        script.append(Exec("script", P + i, 10.5 + i, exe="/x", argv=("x" * 4000,), comm="x"))
    svc = await scripted(script, page_bytes=64 << 10)
    try:
        async with api_client(make_app(svc, manage=False)) as client:
            want = [e.cursor for e in svc.journal.since(0) or []]
            got: list[int] = []
            after, pages = 0, 0
            while True:
                resp, page = await call(client, "GET", f"/v1/events?after={after}&limit=10000")
                assert len(await resp.read()) <= (64 << 10) + 200  # budget + envelope
                got += [e["cursor"] for e in page["events"]]
                pages += 1
                if page["next"] == after:
                    break
                after = page["next"]
            assert got == want and pages > 3  # every event once, in order, over pages
            lives: list[int] = []
            nxt = ""
            while True:
                resp, page = await call(client, "GET", f"/v1/lives?limit=10000{nxt}")
                assert len(await resp.read()) <= (64 << 10) + 200
                lives += [x["pid"] for x in page["lives"]]
                if page["next"] is None:
                    break
                nxt = f"&after={page['next']}"
            assert sorted(p for p in lives if p >= P) == [P + i for i in range(60)]
    finally:
        await svc.stop()


# -- batch checks in slices -----------------------------------------------------------------
async def test_a_big_batch_check_lets_the_loop_run_between_slices(service: Service) -> None:
    app = make_app(service, manage=False)
    async with api_client(app) as client:
        answers = app[ANSWERS]
        turns = 0
        seen: list[int] = []
        real = answers.text

        def text(lid: Any, asked: str, caller: Any = None) -> str:
            seen.append(turns)
            return real(lid, asked, caller)

        async def ticker() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        answers.text = text  # type: ignore[method-assign]  # counts what the loop did
        tick = asyncio.create_task(ticker())
        try:
            n = 10 * CHECK_SLICE
            lives = [f"{service.node.hostname}/{P}/{i + 1}" for i in range(n)]
            resp = await client.post("/v1/lives/check", json={"lives": lives})
            body = await resp.json()
        finally:
            tick.cancel()
        assert len(body["results"]) == n
        # the ticker ran between every two slices, never within one
        assert len(set(seen)) == 10
        assert all(seen[i] == seen[i - 1] for i in range(1, n) if i % CHECK_SLICE)
