"""The audit source's changes to shared kernel state, each recorded so that stop undoes exactly it.

Kernel audit state is shared with auditd and with other lifewatch runs (design.md, "Semantics
that must never bend"): lifewatch adds only rules tagged `<key>:<pid>`, removes rules left
by runs that died without stopping, and on stop removes its own rules, restores `enabled` and
the backlog settings it changed, and releases the audit pid it took.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re

from app.netlink.audit_control import AuditControl
from app.netlink.audit_proto import (
    ARCH_NAMES,
    ARCH_SYSCALLS,
    AUDIT_ALWAYS,
    AUDIT_ARCH,
    AUDIT_EQUAL,
    AUDIT_FILTER_EXIT,
    AUDIT_FILTER_PREPEND,
    AUDIT_NEVER,
    AUDIT_PID,
    AUDIT_STATUS_BACKLOG_LIMIT,
    AUDIT_STATUS_BACKLOG_WAIT_TIME,
    AUDIT_STATUS_ENABLED,
    AUDIT_STATUS_PID,
    AuditRule,
    AuditStatus,
)

log = logging.getLogger(__name__)


def lifewatch_rules(key: str, arches: list[int]) -> list[AuditRule]:
    """One exit-filter rule per arch with a bitmap of the 8 syscalls (not one per syscall:
    the kernel walks the exit list for each audited syscall, and each rule costs a test)."""
    return [
        AuditRule(
            AUDIT_FILTER_EXIT,
            AUDIT_ALWAYS,
            frozenset(ARCH_SYSCALLS[arch].values()),
            ((AUDIT_ARCH, AUDIT_EQUAL, arch),),
            key,
        )
        for arch in arches
    ]


def self_exclusion_rules(key: str, arches: list[int], pid: int) -> list[AuditRule]:
    """`never` rules for this process (multicast mode): a multicast reader's own syscalls
    are audited (fact 7), and each would make records about reading records. Prepended, as
    the first matching rule decides; limited to lifewatch's syscalls so other rules (say,
    auditd's file watches) still see this process."""
    return [
        AuditRule(
            AUDIT_FILTER_EXIT | AUDIT_FILTER_PREPEND,
            AUDIT_NEVER,
            frozenset(ARCH_SYSCALLS[arch].values()),
            ((AUDIT_PID, AUDIT_EQUAL, pid), (AUDIT_ARCH, AUDIT_EQUAL, arch)),
            key,
        )
        for arch in arches
    ]


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists (signal 0: no /proc read, and EPERM still means it exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KernelChanges:
    """What this run changed in the kernel's audit state, made through `control`."""

    def __init__(self, control: AuditControl, key_prefix: str, pid: int) -> None:
        self.control = control
        self.key_prefix = key_prefix
        self.pid = pid
        # `<key_prefix>:<pid>`: each run owns its rules. Two lifewatch runs on one node (a
        # test next to the daemon, a restart overlapping its predecessor) would otherwise
        # install identical rules, and the first to stop would delete the other's.
        self.key = f"{key_prefix}:{pid}"
        self.found: AuditStatus | None = None  # kernel state before our changes
        self.registered = False  # we hold the audit pid (unicast)
        self._restore_mask = 0
        self._installed: list[AuditRule] = []

    async def read_found(self) -> AuditStatus:
        self.found = await self.control.get_status()
        return self.found

    async def enable(self) -> None:
        """Turn auditing on if it was off (first, so that our rule changes are in the stream)."""
        assert self.found is not None
        if not self.found.enabled:
            await self.control.set_status(AuditStatus(mask=AUDIT_STATUS_ENABLED, enabled=1))
            self._restore_mask |= AUDIT_STATUS_ENABLED

    async def set_backlog(self, limit: int, wait_time: int) -> None:
        """The kernel queue's length and wait (unicast: lifewatch is the daemon that drains it)."""
        assert self.found is not None
        if (self.found.backlog_limit, self.found.backlog_wait_time) == (limit, wait_time):
            return
        mask = AUDIT_STATUS_BACKLOG_LIMIT | AUDIT_STATUS_BACKLOG_WAIT_TIME
        await self.control.set_status(
            AuditStatus(mask=mask, backlog_limit=limit, backlog_wait_time=wait_time)
        )
        self._restore_mask |= mask

    async def install_rules(self, multicast: bool) -> list[int]:
        """Remove stale rules, add ours for every arch the kernel accepts; the arches."""
        await self._remove_stale_rules()
        arches: list[int] = []
        for arch in ARCH_SYSCALLS:
            rules = lifewatch_rules(self.key, [arch])
            if multicast:
                rules = self_exclusion_rules(self.key, [arch], self.pid) + rules
            try:
                for rule in rules:
                    await self._add_rule(rule)
            except OSError as e:
                if arch == next(iter(ARCH_SYSCALLS)):
                    raise
                log.info("audit: no rules for %s: %s", ARCH_NAMES[arch], e)
                continue
            arches.append(arch)
        return arches

    async def _remove_stale_rules(self) -> None:
        """Rules left by a lifewatch run that died without stopping (its pid is gone)."""
        own = re.compile(rf"{re.escape(self.key_prefix)}:([0-9]+)")
        for rule in await self.control.list_rules():
            m = own.fullmatch(rule.key or "")
            if m is not None and not pid_alive(int(m[1])):
                log.info("audit: removing a rule left by dead run %s", m[1])
                with contextlib.suppress(OSError):
                    await self.control.delete_rule(rule)

    async def _add_rule(self, rule: AuditRule) -> None:
        try:
            await self.control.add_rule(rule)
        except OSError as e:
            # EEXIST: a dead run with our pid left the same rule (same key): take it over.
            if e.errno != errno.EEXIST:
                raise
        self._installed.append(rule)

    async def restore(self) -> None:
        """Remove exactly our rules, restore what we changed, release the audit pid."""
        for rule in reversed(self._installed):
            try:
                await self.control.delete_rule(rule)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    log.warning("audit: removing rule %s: %s", rule, e)
        self._installed.clear()
        await self._restore_status()
        if self.registered:
            try:
                await self.control.set_status(AuditStatus(mask=AUDIT_STATUS_PID, pid=0))
            except OSError as e:
                log.warning("audit: releasing the audit pid: %s", e)
            self.registered = False

    async def _restore_status(self) -> None:
        found = self.found
        if found is None or not self._restore_mask:
            return
        try:
            await self.control.set_status(
                AuditStatus(
                    mask=self._restore_mask,
                    enabled=found.enabled,
                    backlog_limit=found.backlog_limit,
                    backlog_wait_time=found.backlog_wait_time,
                )
            )
        except OSError as e:
            log.warning("audit: restoring status: %s", e)
        self._restore_mask = 0
