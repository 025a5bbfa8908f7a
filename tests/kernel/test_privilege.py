"""Least privilege (docs/operations.md): `lifewatch serve` started without one capability of
the unit's set fails exactly the source that needs it, naming the capability, and the rest
runs. The daemon is a separate process whose capabilities setpriv(1) lowers: as root the
bounding set (uid 0 keeps no capability outside it), in the unprivileged pass (user
`lifewatch`, scripts/test-unprivileged.sh) the ambient set it already runs with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.netlink.audit_proto import AuditStatus
from app.sources.privilege import NEEDED
from tests.helpers import free_port, listening, stop, wait_until
from tests.kernel.audit_kernel import KEY, kernel_audit_state, ours, rules, status
from tests.kernel.test_serve import get


@pytest.fixture
async def kernel_audit() -> AsyncIterator[AuditStatus]:
    async for found in kernel_audit_state():
        yield found


def without(cap: str | None) -> list[str]:
    """setpriv arguments that run a command with the unit's capabilities except `cap`."""
    keep = ",".join(f"+{c.removeprefix('CAP_').lower()}" for c in NEEDED if c != cap)
    if os.geteuid() == 0:
        return ["setpriv", f"--bounding-set=-all,{keep}", "--"]
    return ["setpriv", f"--inh-caps=-all,{keep}", f"--ambient-caps=-all,{keep}", "--"]


async def serve(
    argv: list[str], env: dict[str, str], sources: str = "audit,proc"
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [*argv, sys.executable, "-m", "app", "serve", "--sources", sources],
        env={**os.environ, **env, "LIFEWATCH_PORT": str(port)}, stderr=subprocess.PIPE,
    )  # fmt: skip
    await listening(proc, port)
    return proc, port


@pytest.mark.parametrize(
    ("cap", "mode"), [("CAP_AUDIT_CONTROL", "auto"), ("CAP_AUDIT_READ", "multicast")]
)
async def test_a_missing_capability_fails_its_source_by_name_and_the_rest_runs(
    kernel_audit: AuditStatus, tmp_path: Path, cap: str, mode: str
) -> None:
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed"
    env = {"LIFEWATCH_AUDIT_KEY": KEY, "LIFEWATCH_STATE_DIR": str(tmp_path),
           "LIFEWATCH_AUDIT_MODE": mode, "LIFEWATCH_CANARY_INTERVAL": "0.5"}  # fmt: skip
    proc, port = await serve(without(cap), env)
    try:
        node: dict[str, Any] = get(port, "/v1/node")
        audit, proc_src = node["sources"]["audit"], node["sources"]["proc"]
        assert audit["state"] == "failed" and cap in audit["reason"], audit
        assert proc_src["state"] == "ok", proc_src
        # The rest works: a death is seen, and the proc source passes its canary.
        child = subprocess.Popen(["sleep", "30"])
        ticks = int(Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])
        child.kill()
        child.wait()
        await wait_until(lambda: get(port, f"/v1/lives/{child.pid}/{ticks}")["state"] == "dead")
        await wait_until(
            lambda: get(port, "/v1/node")["sources"]["proc"]["counters"].get("canary_passes")
        )
    finally:
        stop(proc)
    assert [r for r in await rules() if ours(r)] == []
    assert (await status()).pid != proc.pid


@pytest.fixture
def stranger() -> Iterator[tuple[int, int]]:
    """A process of another user (nobody) holding both ends of a TCP connection to a port
    it listens on: (pid, port)."""
    code = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
            "c = socket.create_connection(s.getsockname()); a = s.accept(); "
            "print(s.getsockname()[1], flush=True); time.sleep(60)")  # fmt: skip
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
            "/usr/bin/python3", "-I", "-c", code]  # fmt: skip
    p = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None
        port = int(p.stdout.readline())
        yield p.pid, port
    finally:
        p.kill()
        p.wait()


@pytest.mark.root_test_side("a process of another user is started with setpriv --reuid")
@pytest.mark.parametrize("cap", [None, "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"])
async def test_other_users_processes_need_ptrace_and_dac_read_search(
    stranger: tuple[int, int], tmp_path: Path, cap: str | None
) -> None:
    """The daemon here is uid 0 with only the unit's capabilities (minus `cap`): uid 0 owns
    nothing of `nobody`'s, so it meets the same checks as user lifewatch."""
    pid, port = stranger
    argv = without(cap)
    proc, api = await serve(argv, {"LIFEWATCH_STATE_DIR": str(tmp_path),
                                   "LIFEWATCH_CANARY_INTERVAL": "0"}, sources="proc")  # fmt: skip
    try:
        life = get(api, f"/v1/lives/{pid}")
        conns = get(api, f"/v1/connections?life={life['id']}")
    finally:
        stop(proc)
    ports = [c.get("local") for c in conns.get("connections", [])]
    if cap == "CAP_SYS_PTRACE":
        assert life["exe"] is None
    else:
        assert life["exe"] and life["exe"].startswith("/usr/bin/python3"), life
    listening = any(str(port) in str(p) for p in ports)
    assert listening == (cap is None), conns
