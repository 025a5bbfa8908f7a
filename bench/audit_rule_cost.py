"""Does every audit rule slow every syscall, open() included? As root:

    .venv/bin/python bench/audit_rule_cost.py [--calls 200000] [--repeat 5]

Times two syscalls that no rule here is about — getppid() and open()+close() of a file —
with: audit off and no rules; lifewatch's rules (one exit rule per arch, a bitmap of 8
syscalls); the same 8 syscalls as 8 rules per arch (one rule per syscall, as in the rules
file of the request that started this project); and 64 rules per arch. Prints nanoseconds
per call, median of `--repeat`. The kernel's audit state is restored afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from app.netlink.audit_control import AuditControl
from app.netlink.audit_proto import (
    ARCH_SYSCALLS,
    AUDIT_ALWAYS,
    AUDIT_ARCH,
    AUDIT_EQUAL,
    AUDIT_FILTER_EXIT,
    AUDIT_STATUS_ENABLED,
    AuditRule,
    AuditStatus,
)
from app.sources.audit_rules import lifewatch_rules

KEY = "lifewatch-rulecost"
# Syscalls for filler rules: none is getppid (110), open/openat (2, 257) or close (3).
FILLER = [n for n in range(400) if n not in (2, 3, 110, 257)][:64]


def per_syscall_rules() -> list[AuditRule]:
    return [
        AuditRule(
            AUDIT_FILTER_EXIT,
            AUDIT_ALWAYS,
            frozenset({nr}),
            ((AUDIT_ARCH, AUDIT_EQUAL, arch),),
            KEY,
        )
        for arch, table in ARCH_SYSCALLS.items()
        for nr in table.values()
    ]


def many_rules(n: int) -> list[AuditRule]:
    return [
        AuditRule(
            AUDIT_FILTER_EXIT,
            AUDIT_ALWAYS,
            frozenset({nr}),
            ((AUDIT_ARCH, AUDIT_EQUAL, arch),),
            f"{KEY}-{nr}",
        )
        for arch in ARCH_SYSCALLS
        for nr in FILLER[:n]
    ]


def time_calls(calls: int) -> tuple[float, float]:
    getppid = os.getppid
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        getppid()
    t1 = time.perf_counter_ns()
    path, flags, open_, close = "/etc/hostname", os.O_RDONLY, os.open, os.close
    for _ in range(calls // 4):
        close(open_(path, flags))
    t2 = time.perf_counter_ns()
    return (t1 - t0) / calls, (t2 - t1) / (calls // 4)


async def measure(ctl: AuditControl, rules: list[AuditRule], enabled: int,
                  args: argparse.Namespace) -> tuple[float, float]:  # fmt: skip
    await ctl.set_status(AuditStatus(mask=AUDIT_STATUS_ENABLED, enabled=enabled))
    for r in rules:
        await ctl.add_rule(r)
    try:
        runs = [time_calls(args.calls) for _ in range(args.repeat)]
    finally:
        for r in rules:
            await ctl.delete_rule(r)
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


async def main(args: argparse.Namespace) -> None:
    ctl = AuditControl()
    found = await ctl.get_status()
    if found.pid:
        raise SystemExit(f"an audit daemon (pid {found.pid}) runs: measure on a quiet node")
    try:
        cases = [
            ("audit off, no rules", [], 0),
            ("audit on, no rules", [], 1),
            ("lifewatch: 1 rule/arch, 8-syscall bitmap", lifewatch_rules(KEY, list(ARCH_SYSCALLS)),
             1),
            ("8 rules/arch, one per syscall", per_syscall_rules(), 1),
            ("64 rules/arch, other syscalls", many_rules(64), 1),
        ]  # fmt: skip
        print(f"{'':<44}{'getppid ns':>12}{'open+close ns':>15}")
        for name, rules, enabled in cases:
            g, o = await measure(ctl, rules, enabled, args)
            print(f"{name:<44}{g:>12.0f}{o:>15.0f}", flush=True)
    finally:
        await ctl.set_status(AuditStatus(mask=AUDIT_STATUS_ENABLED, enabled=found.enabled))
        ctl.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(ap.parse_args()))
