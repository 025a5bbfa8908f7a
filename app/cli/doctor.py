"""`lifewatch doctor`: checks this node for what lifewatch needs and says what to fix.

Each check is ok, warn or fail with a one-line fix; the exit code is the worst (0, 1, 2).
Facts are gathered first (kernel, /proc, files, the running daemon) and judged by pure
functions, so each verdict is tested on made-up facts (a locked audit included: `auditctl -e
2` cannot be undone before a reboot, so it is never set on a real machine to test this).
Nothing here changes kernel state: the proc connector is joined and left, that is all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import ValidationError

from app import procfs
from app.client import Lifewatch, LifewatchError
from app.core.config import Config, load_config
from app.netlink.audit_control import AuditControl
from app.netlink.audit_proto import AuditRule, AuditStatus
from app.sources.privilege import NEEDED, effective
from app.sources.proc import ProcConnectorSource, ProcSettings

OK, WARN, FAIL = "ok", "warn", "fail"
RANK = {OK: 0, WARN: 1, FAIL: 2}
RULE_FILES = (Path("/etc/audit/audit.rules"), Path("/etc/audit/rules.d"))
BACKLOG_WANTED = 8192
# Without these a source fails; without the others a feature is limited (app/sources/privilege).
ESSENTIAL = frozenset({"CAP_AUDIT_CONTROL", "CAP_AUDIT_READ"})


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


# -- judging facts (pure) ------------------------------------------------------------------
def judge_capabilities(have: Iterable[str], root: bool) -> list[Check]:
    have = set(have)
    out = []
    for cap, why in NEEDED.items():
        if cap in have:
            out.append(Check(f"capability {cap}", OK, "held"))
        else:
            level = FAIL if cap in ESSENTIAL else WARN
            out.append(Check(f"capability {cap}", level, f"missing: {why}",
                             "run lifewatch from packaging/lifewatch.service "
                             "(AmbientCapabilities=) or as root"))  # fmt: skip
    if root and have >= set(NEEDED):
        out.append(Check("user", WARN, "running as root: more privilege than lifewatch needs",
                         "run as user lifewatch with the unit's capabilities "
                         "(packaging/lifewatch.service)"))  # fmt: skip
    return out


def judge_audit(
    status: AuditStatus | None,
    error: str,
    holder: str | None,
    rules: list[AuditRule],
    rule_files: dict[str, str],
    key: str = "lifewatch",
) -> list[Check]:
    """`holder`: the comm of the live process holding the audit pid, None if none; `key`:
    lifewatch's audit_key (its rules are keyed `<key>:<pid>`)."""
    if status is None:
        return [Check("audit", FAIL, f"cannot read the audit status: {error}",
                      "needs CAP_AUDIT_CONTROL (see the capability checks) and a kernel with "
                      "CONFIG_AUDIT")]  # fmt: skip
    out = []
    if status.enabled == 2:
        out.append(Check("audit lock", FAIL,
                         "audit is locked (enabled 2, auditctl -e 2): lifewatch cannot add its "
                         "rules until reboot; its audit source falls back to multicast, reading "
                         "only what the node's own rules record, and reports degraded",
                         "remove -e 2 from the audit rules (/etc/audit/rules.d) and reboot, or "
                         "run lifewatch with --sources proc"))  # fmt: skip
    else:
        out.append(Check("audit", OK, f"enabled {status.enabled}, not locked"))
    own = re.compile(rf"{re.escape(key)}:[0-9]+")
    mine = [r for r in rules if own.fullmatch(r.key or "")]
    others = len(rules) - len(mine)
    if holder and any(r.key == f"{key}:{status.pid}" for r in mine):
        out.append(Check("audit pid", OK, f"held by lifewatch itself (pid {status.pid}, "
                         "unicast: lossless)"))  # fmt: skip
    elif holder:
        out.append(Check("audit pid", OK if status.enabled != 2 else WARN,
                         f"held by pid {status.pid} ({holder}) with {others} rule(s) of its "
                         "own: lifewatch reads the multicast group next to it (needs "
                         "CAP_AUDIT_READ)"))  # fmt: skip
    else:
        out.append(Check("audit pid", OK, "free: lifewatch becomes the audit daemon (unicast, "
                         "lossless)" if not status.pid else f"held by dead pid {status.pid}: "
                         "free for lifewatch"))  # fmt: skip
    if mine:
        out.append(Check("lifewatch rules", OK, f"{len(mine)} rule(s) keyed lifewatch:<pid> "
                         "installed"))  # fmt: skip
    deleting = [f for f, text in rule_files.items() if re.search(r"(?m)^\s*-D\b", text)]
    if deleting:
        out.append(Check("auditd rules", WARN,
                         f"{', '.join(deleting)} begin(s) with -D: loading them (auditd start, "
                         "augenrules --load) deletes every rule, lifewatch's too; its canary then "
                         "reports audit degraded",
                         "start auditd before lifewatch (the unit orders After=auditd.service), "
                         "or restart lifewatch after reloading audit rules"))  # fmt: skip
    if status.backlog_limit < BACKLOG_WANTED and not holder:
        out.append(Check("audit backlog", OK,
                         f"backlog_limit {status.backlog_limit}: lifewatch sets "
                         f"{BACKLOG_WANTED} while it is the audit daemon"))  # fmt: skip
    elif status.backlog_limit < BACKLOG_WANTED:
        out.append(Check("audit backlog", WARN,
                         f"backlog_limit {status.backlog_limit} set by the audit daemon: a "
                         "burst of forks loses records (kernel lost counter)",
                         f"add -b {BACKLOG_WANTED} to the audit rules"))  # fmt: skip
    else:
        out.append(Check("audit backlog", OK, f"backlog_limit {status.backlog_limit}, wait "
                         f"{status.backlog_wait_time}, lost so far {status.lost}"))  # fmt: skip
    if status.backlog_wait_time == 0:
        out.append(Check("audit backlog wait", WARN, "backlog_wait_time 0: records are "
                         "dropped at once when the queue is full",
                         "auditctl --backlog_wait_time 60000"))  # fmt: skip
    return out


def judge_clock(pinned: int | None, kernel: int) -> Check:
    if pinned is None:
        return Check("clock", OK, f"btime {kernel} (no pinned btime yet)")
    drift = kernel - pinned
    if abs(drift) <= 1:
        return Check("clock", OK, f"btime {kernel} matches the pinned {pinned}")
    return Check("clock", WARN, f"the wall clock was stepped: btime moved {drift:+d} s from the "
                 f"pinned {pinned}; lifewatch keeps its dates and reports clock_stepped",
                 "check NTP (chronyc tracking); nothing to do for lifewatch")  # fmt: skip


def judge_state_dir(path: Path | None) -> Check:
    if path is None:
        return Check("state dir", OK, "off (state_dir = none): btime is not pinned across runs")
    if path.is_dir():
        if os.access(path, os.W_OK | os.X_OK):
            return Check("state dir", OK, f"{path} writable")
        return Check("state dir", FAIL, f"{path} is not writable by uid {os.geteuid()}",
                     f"chown lifewatch: {path} (packaging/lifewatch.tmpfiles)")  # fmt: skip
    parent = path.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Check("state dir", OK, f"{path} will be created")
    return Check("state dir", FAIL, f"{path} does not exist and {parent} is not writable",
                 "systemd-tmpfiles --create /etc/tmpfiles.d/lifewatch.conf "
                 "(packaging/lifewatch.tmpfiles)")  # fmt: skip


def judge_daemon(code: int | None, body: dict[str, object] | None, error: str) -> Check:
    if code is None:
        return Check("daemon", WARN, f"no lifewatch answers: {error}",
                     "systemctl start lifewatch (or lifewatch serve)")  # fmt: skip
    if code == 200:
        return Check("daemon", OK, f"healthy: {body}")
    return Check("daemon", FAIL, f"answers {code}: {body}",
                 "curl its /v1/node for each source's reason; journalctl -u lifewatch")  # fmt: skip


def worst(checks: Iterable[Check]) -> int:
    return max((RANK[c.status] for c in checks), default=0)


# -- gathering facts ----------------------------------------------------------------------
async def audit_facts() -> tuple[AuditStatus | None, str, list[AuditRule]]:
    try:
        async with AuditControl() as c:
            st = await c.get_status()
            return st, "", await c.list_rules()
    except OSError as e:
        return None, str(e), []


def holder_comm(pid: int) -> str | None:
    if not pid:
        return None
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def rule_files() -> dict[str, str]:
    out = {}
    for where in RULE_FILES:
        files = sorted(where.glob("*.rules")) if where.is_dir() else [where]
        for f in files:
            try:
                out[str(f)] = f.read_text()
            except OSError:
                continue
    return out


async def proc_connector() -> Check:
    class Discard:
        def submit(self, obs: object) -> None:
            return None

    src = ProcConnectorSource(ProcSettings(rcvbuf=1 << 16))
    try:
        await src.start(Discard())
    except Exception as e:
        return Check("proc connector", FAIL, f"cannot join: {e}",
                     "a kernel with CONFIG_PROC_EVENTS; before Linux 6.6 "
                     "CAP_NET_ADMIN")  # fmt: skip
    await src.stop()
    return Check("proc connector", OK, "joined and left (FORK/EXEC/EXIT events available)")


def pidfs() -> Check:
    try:
        a = os.pidfd_open(os.getpid())
    except OSError as e:
        return Check("pidfd", FAIL, f"pidfd_open: {e}", "Linux 5.3 or later")
    try:
        b = os.pidfd_open(os.getppid() or 1)
        try:
            unique = os.fstat(a).st_ino != os.fstat(b).st_ino
        finally:
            os.close(b)
    finally:
        os.close(a)
    if unique:
        return Check("pidfd", OK, "pidfd_open works; pidfs gives each process its own inode")
    return Check("pidfd", WARN, "pidfd_open works but without pidfs (no per-process inode)",
                 "Linux 6.9 or later for pidfd inodes on lives")  # fmt: skip


def rmem(have: set[str], config: Config) -> Check:
    try:
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return Check("socket buffers", WARN, "cannot read net.core.rmem_max")
    want = max(config.audit_rcvbuf, config.proc_rcvbuf)
    if "CAP_NET_ADMIN" in have or rmem_max >= want:
        return Check("socket buffers", OK, f"{want >> 20} MiB receive buffers available")
    return Check("socket buffers", WARN, f"without CAP_NET_ADMIN the buffers are capped at "
                 f"net.core.rmem_max = {rmem_max} (wanted {want}): more overruns in a storm",
                 f"sysctl -w net.core.rmem_max={want}, or grant CAP_NET_ADMIN")  # fmt: skip


def daemon(url: str) -> Check:
    try:
        return judge_daemon(200, Lifewatch(url, timeout=3).request_sync("GET", "/healthz"), "")
    except LifewatchError as e:
        if e.status:
            return judge_daemon(e.status, e.body, "")
        return judge_daemon(None, None, f"{url}: {e}")


def gather(url: str, config: Config | None, config_error: str) -> list[Check]:
    have = set(effective())
    checks = judge_capabilities(have, os.geteuid() == 0)
    status, error, rules = asyncio.run(audit_facts())
    holder = holder_comm(status.pid) if status is not None else None
    key = config.audit_key if config is not None else "lifewatch"
    checks += judge_audit(status, error, holder, rules, rule_files(), key)
    checks.append(asyncio.run(proc_connector()))
    checks.append(pidfs())
    if config is None:
        checks.append(Check("config", FAIL, config_error, "lifewatch serve --check-config"))
        config = Config()
    else:
        checks.append(Check("config", OK, "valid"))
    checks.append(rmem(have, config))
    pinned = None
    if config.state_dir is not None:
        try:  # "<boot_id> <btime>", pinned by the daemon (app/core/identity.py)
            boot, btime = (config.state_dir / "btime").read_text().split()
            pinned = int(btime) if boot == procfs.read_boot_id() else None
        except (OSError, ValueError):
            pinned = None
    checks.append(judge_clock(pinned, procfs.read_btime()))
    checks.append(judge_state_dir(config.state_dir))
    checks.append(daemon(url))
    return checks


def run_doctor(args: argparse.Namespace) -> int:
    from app.cli.settings import config_file

    file = config_file(None, os.environ)
    config: Config | None = None
    error = ""
    try:
        config = load_config(file, dict(os.environ), {})
    except (ValidationError, OSError, ValueError) as e:
        error = f"{file}: {e}"
    checks = gather(args.url, config, error)
    code = worst(checks)
    if args.json:
        print(json.dumps({"status": [OK, WARN, FAIL][code],
                          "checks": [asdict(c) for c in checks]}, indent=2))  # fmt: skip
    else:
        for c in checks:
            print(f"{c.status.upper():<4}  {c.name}: {c.detail}")
            if c.fix and c.status != OK:
                print(f"      fix: {c.fix}")
    return code
