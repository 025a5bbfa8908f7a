"""Fixtures and helpers for the audit tests that run on the live kernel (as root).

Every fixture puts the kernel's audit state back as it found it (enabled, pid, backlog
settings, rules) in its teardown, also when the test fails. Rules are only ever removed by
exact match or by this run's own key: never `auditctl -D`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.service import Service
from app.netlink.audit_control import AuditControl
from app.netlink.audit_proto import (
    AUDIT_STATUS_BACKLOG_LIMIT,
    AUDIT_STATUS_BACKLOG_WAIT_TIME,
    AUDIT_STATUS_ENABLED,
    AUDIT_STATUS_PID,
    AuditRule,
    AuditStatus,
)

HELPER = Path(__file__).parent / "audit_helper.py"
KEY = f"lifewatch-test-{os.getpid()}"  # this run's rules: never anyone else's


def ours(rule: AuditRule) -> bool:
    """A rule of this test run's lifewatch (keys are `<audit_key>:<pid>`)."""
    return rule.key is not None and rule.key.startswith(f"{KEY}:")


async def status() -> AuditStatus:
    async with AuditControl() as c:
        return await c.get_status()


async def rules() -> list[AuditRule]:
    async with AuditControl() as c:
        return await c.list_rules()


async def restore(found: AuditStatus, found_rules: list[AuditRule]) -> None:
    """Put back what the test found: our-key rules removed, settings and pid restored."""
    c = AuditControl()
    try:
        for rule in await c.list_rules():
            if rule.key is not None and rule.key.startswith(KEY) and rule not in found_rules:
                await c.delete_rule(rule)
        now = await c.get_status()
        if now.pid == os.getpid() and found.pid != os.getpid():
            await c.set_status(AuditStatus(mask=AUDIT_STATUS_PID, pid=0))
        mask = 0
        if now.enabled != found.enabled:
            mask |= AUDIT_STATUS_ENABLED
        if now.backlog_limit != found.backlog_limit:
            mask |= AUDIT_STATUS_BACKLOG_LIMIT
        if now.backlog_wait_time != found.backlog_wait_time:
            mask |= AUDIT_STATUS_BACKLOG_WAIT_TIME
        if mask:
            await c.set_status(
                AuditStatus(
                    mask=mask,
                    enabled=found.enabled,
                    backlog_limit=found.backlog_limit,
                    backlog_wait_time=found.backlog_wait_time,
                )
            )
    finally:
        c.close()


async def wait_unicast_free(limit: float = 90.0) -> None:
    """Another engineer's test may hold the audit pid (only one process can): wait, never
    force. Gives up with a skip outside CI, a failure in CI."""
    deadline = time.monotonic() + limit
    while True:
        st = await status()
        if not st.pid or not _alive(st.pid):
            return
        if time.monotonic() > deadline:
            msg = f"the audit pid is held by pid {st.pid} for more than {limit:.0f} s"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        await asyncio.sleep(1.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def kernel_audit_state() -> AsyncIterator[AuditStatus]:
    """Body of the `kernel_audit` fixture: yields the state found, restores it after."""
    found = await status()
    found_rules = await rules()
    try:
        yield found
    finally:
        await restore(found, found_rules)
        after = await status()
        assert (after.enabled, after.backlog_limit, after.backlog_wait_time) == (
            found.enabled, found.backlog_limit, found.backlog_wait_time,
        )  # fmt: skip
        assert [r for r in await rules() if ours(r)] == []


async def run_helper(*args: str) -> dict[str, Any]:
    """Run the workload in a helper process (not the daemon: design.md fact 3)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HELPER), *args, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    truth: dict[str, Any] = json.loads(out)
    return truth


async def started(svc: Service) -> Service:
    """Start a Service and insist its audit source runs (Service.start reports a source that
    failed to start instead of raising)."""
    await svc.start()
    health = svc.sources[0].health()
    if health.state != "ok":
        await svc.stop()
        pytest.fail(f"audit source did not start: {health.state}: {health.reason}")
    return svc


def auditctl(*args: str) -> str:
    return subprocess.run(["auditctl", *args], check=True, capture_output=True, text=True).stdout


AUDITD_RULE = ("-a", "exit,always", "-F", "arch=b64", "-S", "execve", "-k", f"{KEY}-auditd")


def auditd_running(tmp: Path) -> Iterator[Path]:
    """Body of the `auditd` fixture: Debian's auditd with a private config and log, plus one
    rule of "its own"; stopped and cleaned up after. Yields the log file."""
    if shutil.which("auditd") is None:
        if os.environ.get("CI"):
            pytest.fail("auditd is not installed (`make test` as root installs Debian's auditd)")
        pytest.skip("auditd is not installed")
    log = tmp / "audit.log"
    (tmp / "plugins.d").mkdir()
    conf = Path("/etc/audit/auditd.conf").read_text().splitlines()
    override = {
        "log_file": str(log), "plugin_dir": str(tmp / "plugins.d"), "log_group": "root",
        "space_left_action": "IGNORE", "admin_space_left_action": "IGNORE",
        "disk_full_action": "IGNORE", "disk_error_action": "IGNORE", "flush": "INCREMENTAL",
        "freq": "1",
    }  # fmt: skip
    lines = []
    for ln in conf:
        k = ln.split("=", 1)[0].strip()
        lines.append(f"{k} = {override.pop(k)}" if "=" in ln and k in override else ln)
    lines += [f"{k} = {v}" for k, v in override.items()]
    (tmp / "auditd.conf").write_text("\n".join(lines) + "\n")
    os.chmod(tmp / "auditd.conf", 0o640)
    asyncio.run(wait_unicast_free())
    daemon = subprocess.Popen(["auditd", "-n", "-s", "nochange", "-c", str(tmp)])
    try:
        deadline = time.monotonic() + 10
        while asyncio.run(status()).pid != daemon.pid:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"auditd did not register (exit {daemon.poll()})")
            time.sleep(0.1)
        auditctl(*AUDITD_RULE)
        yield log
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            auditctl("-d", *AUDITD_RULE[1:])
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
