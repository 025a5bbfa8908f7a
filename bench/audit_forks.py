"""Fork benchmark: how much does auditing cost a workload of short lives, and does lifewatch
miss any of them? As root:

    .venv/bin/python bench/audit_forks.py [--seconds 3] [--repeat 3]

Two worker processes fork short lives as fast as they can for `--seconds`: `exit` mode
(fork + _exit) and `exec` mode (fork + exec /bin/true). Each worker keeps the ground truth:
the child's pid, its start ticks read from the zombie before reaping (waitid WNOWAIT), and
its exit status. Three scenarios, each `--repeat` times (median reported):

- `none`: no audit rules;
- `auditd`: Debian's auditd registered and consuming the same rules lifewatch installs
  (one exit rule per arch over clone, fork, vfork, clone3, execve, execveat, exit,
  exit_group), with its stock configuration except the log path;
- `lifewatch`: lifewatch's audit source in unicast mode (this process), the whole pipeline
  to the registry; afterwards every ground-truth life is looked up in the registry.

Reports lives/s, the kernel's `lost` counter delta (target 0) and, for lifewatch, lives
missed (not in the registry, or not dead with the right exit code; target 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from app.core.config import Config
from app.core.service import Service
from app.netlink.audit_control import AuditControl
from app.netlink.audit_proto import (
    AUDIT_STATUS_BACKLOG_LIMIT,
    AUDIT_STATUS_BACKLOG_WAIT_TIME,
    AUDIT_STATUS_ENABLED,
    AuditStatus,
)

SYSCALLS = "clone,fork,vfork,clone3,execve,execveat,exit,exit_group"
RULES = [("-a", "exit,always", "-F", f"arch={a}", "-S", SYSCALLS, "-k", "lifewatch-bench")
         for a in ("b64", "b32")]  # fmt: skip


# -- the worker (a separate process) -----------------------------------------------------------
def worker(mode: str, seconds: float, out: str) -> None:
    lives: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + seconds
    argv = ["/bin/true"]
    while time.monotonic() < deadline:
        pid = os.fork()
        if pid == 0:
            if mode == "exec":
                os.execv(argv[0], argv)
            os._exit(0)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        ticks = int(data[data.rfind(b")") + 2 :].split()[19])
        _, status = os.waitpid(pid, 0)
        lives.append((pid, ticks, os.waitstatus_to_exitcode(status)))
    Path(out).write_text(json.dumps(lives))


async def run_workers(mode: str, seconds: float, tmp: Path) -> list[tuple[int, int, int]]:
    outs = [tmp / f"w{i}.json" for i in range(2)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", mode, str(seconds), str(o)
        )
        for o in outs
    ]
    for p in procs:
        await p.wait()
    lives: list[tuple[int, int, int]] = []
    for o in outs:
        lives += [(pid, ticks, code) for pid, ticks, code in json.loads(o.read_text())]
    return lives


# -- kernel state ----------------------------------------------------------------------------
async def status() -> AuditStatus:
    async with AuditControl() as c:
        return await c.get_status()


async def restore(found: AuditStatus) -> None:
    c = AuditControl()
    try:
        await c.set_status(
            AuditStatus(
                mask=AUDIT_STATUS_ENABLED | AUDIT_STATUS_BACKLOG_LIMIT
                | AUDIT_STATUS_BACKLOG_WAIT_TIME,
                enabled=found.enabled, backlog_limit=found.backlog_limit,
                backlog_wait_time=found.backlog_wait_time,
            )
        )  # fmt: skip
    finally:
        c.close()


def start_auditd(tmp: Path) -> subprocess.Popen[bytes]:
    conf = []
    for line in Path("/etc/audit/auditd.conf").read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key == "log_file":
            line = f"log_file = {tmp / 'audit.log'}"
        elif key == "plugin_dir":
            line = f"plugin_dir = {tmp}"
        conf.append(line)
    (tmp / "auditd.conf").write_text("\n".join(conf) + "\n")
    os.chmod(tmp / "auditd.conf", 0o640)
    daemon = subprocess.Popen(["auditd", "-n", "-s", "enable", "-c", str(tmp)])
    deadline = time.monotonic() + 10
    while asyncio.run(status()).pid != daemon.pid:
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("auditd did not register")
        time.sleep(0.1)
    return daemon


# -- scenarios -------------------------------------------------------------------------------
async def scenario(name: str, mode: str, seconds: float) -> dict[str, Any]:
    found = await status()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        daemon = None
        svc = None
        try:
            if name == "auditd":
                daemon = await asyncio.to_thread(start_auditd, tmp)
                for rule in RULES:
                    subprocess.run(["auditctl", *rule], check=True, capture_output=True)
            elif name == "lifewatch":
                svc = Service(Config(sources=("audit",), state_dir=None, audit_mode="unicast",
                                     history=1_000_000, journal_size=100_000))  # fmt: skip
                await svc.start()
                if svc.sources[0].health().state != "ok":
                    raise RuntimeError(svc.sources[0].health().reason)
            lost0 = (await status()).lost
            lives = await run_workers(mode, seconds, tmp)
            result: dict[str, Any] = {"lives_per_s": len(lives) / seconds, "lives": len(lives)}
            if svc is not None:
                result |= await settle_and_check(svc, lives)
            result["kernel_lost"] = (await status()).lost - lost0
        finally:
            if svc is not None:
                await svc.stop()
            if daemon is not None:
                for rule in RULES:
                    subprocess.run(["auditctl", "-d", *rule[1:]], capture_output=True)
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(10)
            await restore(found)
    return result


async def settle_and_check(svc: Service, lives: list[tuple[int, int, int]]) -> dict[str, Any]:
    """Wait until the pipeline has caught up (every ground-truth life resolved, or nothing new
    read for 2 s), then look every life up. `drain_s`: how long after the workload ended
    lifewatch still had records to work through."""
    source = svc.sources[0]
    t0 = time.monotonic()
    last, quiet_since = -1, time.monotonic()

    def check() -> tuple[int, int, int]:
        missed = wrong = derived = 0
        for pid, ticks, code in lives:
            life = svc.registry.find(pid, ticks)
            if life is None:
                missed += 1
            elif life.alive or life.exit is None or life.exit.code != code:
                wrong += 1
            elif life.start_slack:
                derived += 1
        return missed, wrong, derived

    def start_off() -> int:
        """Missed lives that *are* recorded (dead, right code) but whose derived start is
        more than a tick away from the truth: a lookup answers `unknown` for them."""
        n = 0
        for pid, ticks, code in lives:
            if svc.registry.find(pid, ticks) is None and any(
                x.pid == pid
                and not x.alive
                and x.exit is not None
                and x.exit.code == code
                and x.start_slack
                and 1 < ticks - x.start_ticks <= 10
                for x in svc.registry.lives("dead")
            ):
                n += 1
        return n

    while True:
        missed, wrong, derived = check()
        if missed == wrong == 0:
            break
        n = source.health().counters["datagrams"]
        if n != last:
            last, quiet_since = n, time.monotonic()
        elif time.monotonic() - quiet_since > 2.0:
            break
        await asyncio.sleep(0.2)
    lag = time.monotonic() - t0
    h = source.health().counters
    off = start_off() if missed else 0
    return {"missed": missed, "of_which_start_off": off, "wrong": wrong,
            "derived_start": derived, "drain_s": round(lag, 1),
            "serial_gaps": h["gaps"], "enobufs": h["enobufs"]}  # fmt: skip


async def drain_capacity(mode: str, seconds: float) -> dict[str, Any]:
    """The live pipeline's own speed, which the slow forks of a VM hide: lifewatch stops
    reading while the workers run (the kernel queues everything: large backlog, lossless),
    then reads the backlog as fast as it can, through tracker and registry. Records/s and
    lives/s of that catch-up."""
    found = await status()
    svc = Service(Config(sources=("audit",), state_dir=None, audit_mode="unicast",
                         audit_backlog_limit=1_000_000, history=1_000_000,
                         journal_size=100_000))  # fmt: skip
    await svc.start()
    source: Any = svc.sources[0]
    try:
        loop = asyncio.get_running_loop()
        loop.remove_reader(source._sock.fileno())
        with tempfile.TemporaryDirectory() as t:
            lost0 = (await status()).lost
            lives = await run_workers(mode, seconds, Path(t))
        queued = (await status()).backlog
        d0, t0 = source.counters["datagrams"], time.perf_counter()
        loop.add_reader(source._sock.fileno(), source._on_readable)
        # done when every ground-truth life is in the registry, dead with its code (other
        # processes' records arriving later must not stretch the measurement)
        reg = svc.registry
        pending = list(lives)
        while pending and time.perf_counter() - t0 < 60:
            await asyncio.sleep(0.005)
            pending = [x for x in pending if (life := reg.find(x[0], x[1])) is None
                       or life.alive or life.exit is None or life.exit.code != x[2]]  # fmt: skip
        dt = time.perf_counter() - t0
        records = source.counters["datagrams"] - d0
        check = await settle_and_check(svc, lives)
        return {"queued_in_kernel": queued, "records": records, "seconds": round(dt, 2),
                "records_per_s": round(records / dt), "lives_per_s": round(len(lives) / dt),
                "lives": len(lives), "missed": check["missed"],
                "of_which_start_off": check["of_which_start_off"], "wrong": check["wrong"],
                "kernel_lost": (await status()).lost - lost0}  # fmt: skip
    finally:
        await svc.stop()
        await restore(found)


async def main(args: argparse.Namespace) -> None:
    if os.geteuid() != 0 or shutil.which("auditd") is None:
        sys.exit("run as root, with Debian's auditd installed")
    report: dict[str, dict[str, Any]] = {}
    for mode in ("exit", "exec"):
        for name in () if args.catch_up_only else ("none", "auditd", "lifewatch"):
            runs = [await scenario(name, mode, args.seconds) for _ in range(args.repeat)]
            med = statistics.median(r["lives_per_s"] for r in runs)
            keys = [k for k in runs[0] if k not in ("lives_per_s",)]
            worst = {k: max(r[k] for r in runs) for k in keys}
            report[f"{mode}/{name}"] = {"lives_per_s_median": round(med), **worst}
            print(f"fork+{mode:<4} {name:<9} {med:>9,.0f} lives/s  worst of {args.repeat}: "
                  + ", ".join(f"{k}={v}" for k, v in worst.items()), flush=True)  # fmt: skip
    for mode in ("exit", "exec"):
        r = await drain_capacity(mode, args.seconds)
        report[f"{mode}/lifewatch-catch-up"] = r
        print(f"fork+{mode:<4} lifewatch catch-up: " + ", ".join(f"{k}={v}" for k, v in r.items()),
              flush=True)  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    # a SIGTERM (timeout) must still run the `finally` blocks that restore the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], float(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--catch-up-only", action="store_true")
    asyncio.run(main(ap.parse_args()))
