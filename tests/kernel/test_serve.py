"""`lifewatch serve` as users run it (uvloop, audit + proc sources), end to end as root.

The daemon is a separate process here, so the test process's own children are audited
(design.md fact 3 concerns only the process registered as the audit daemon).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.netlink.audit_proto import AuditStatus
from tests.helpers import AUTH, TOKEN, free_port, listening, stop, wait_until
from tests.kernel.audit_kernel import (
    KEY,
    kernel_audit_state,
    ours,
    rules,
    status,
    wait_unicast_free,
)


@pytest.fixture
async def kernel_audit() -> AsyncIterator[AuditStatus]:
    async for found in kernel_audit_state():
        yield found


def get(port: int, path: str) -> Any:
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=AUTH)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


@pytest.fixture
async def daemon(
    kernel_audit: AuditStatus, tmp_path: Path
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    await wait_unicast_free()  # so that `auto` picks unicast, as on a node without auditd
    port = free_port()
    env = dict(os.environ, LIFEWATCH_PORT=str(port), LIFEWATCH_AUDIT_KEY=KEY,
               LIFEWATCH_STATE_DIR=str(tmp_path), LIFEWATCH_CANARY_INTERVAL="1",
               LIFEWATCH_TOKEN=TOKEN, LIFEWATCH_SOCKET=str(tmp_path / "lw.sock"))  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--sources", "audit,proc"],
                            env=env, stderr=subprocess.PIPE)  # fmt: skip
    try:
        await listening(proc, port)
        yield proc, port
    finally:
        stop(proc)


async def test_serve_end_to_end(daemon: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = daemon
    node = get(port, "/v1/node")
    assert node["sources"]["audit"]["state"] == "ok", node["sources"]["audit"]
    assert node["sources"]["proc"]["state"] == "ok", node["sources"]["proc"]
    # Spawn a process and compute its start ourselves, from /proc, as a client would.
    child = subprocess.Popen(["sleep", "30"])
    await wait_until(lambda: Path(f"/proc/{child.pid}/cmdline").read_bytes())
    ticks = int(Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])

    def seen_by_audit() -> dict[str, Any] | None:
        a: dict[str, Any] = get(port, f"/v1/lives/{child.pid}/{ticks}")
        return a if a["life"] and "audit" in a["life"]["sources"] else None

    ans = await wait_until(seen_by_audit)
    assert ans["state"] == "alive"
    assert ans["life"]["start_ticks"] == ticks
    assert ans["life"]["argv"] == ["sleep", "30"]
    assert {"audit", "proc"} <= set(ans["life"]["sources"])
    assert get(port, f"/v1/lives/{child.pid}/{ticks + 7}")["state"] == "unknown"
    bad = get(port, f"/v1/lives/{child.pid}/not-a-start")
    assert bad["error"] == "bad_life" and "start must be" in bad["detail"]
    child.kill()
    child.wait()
    dead = await wait_until(
        lambda: (a := get(port, f"/v1/lives/{child.pid}/{ticks}"))["state"] == "dead" and a
    )
    assert dead["exit"] == {"code": None, "signal": 9, "core_dumped": False}
    # A clean stop gives the audit pid back and removes every rule it added.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    after = await status()
    assert after.pid != proc.pid
    assert [r for r in await rules() if ours(r)] == []
