"""Audit netlink wire formats: message types, `struct audit_status`, `struct audit_rule_data`.

Names and values follow the kernel's `include/uapi/linux/audit.h` verbatim; the structs are
packed and unpacked here in code, so no part of lifewatch shells out to auditctl.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1  # multicast group of the read-only log (needs CAP_AUDIT_READ)

# -- message types (include/uapi/linux/audit.h) --------------------------------------------
AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013
AUDIT_SYSCALL = 1300
AUDIT_PATH = 1302
AUDIT_CONFIG_CHANGE = 1305
AUDIT_CWD = 1307
AUDIT_EXECVE = 1309
AUDIT_EOE = 1320
AUDIT_BPRM_FCAPS = 1321
AUDIT_PROCTITLE = 1327
AUDIT_REPLACE = 1329

# -- struct audit_status -----------------------------------------------------------------------
AUDIT_STATUS_ENABLED = 0x0001
AUDIT_STATUS_FAILURE = 0x0002
AUDIT_STATUS_PID = 0x0004
AUDIT_STATUS_RATE_LIMIT = 0x0008
AUDIT_STATUS_BACKLOG_LIMIT = 0x0010
AUDIT_STATUS_BACKLOG_WAIT_TIME = 0x0020
AUDIT_STATUS_LOST = 0x0040

# mask, enabled, failure, pid, rate_limit, backlog_limit, lost, backlog,
# feature_bitmap (was: version), backlog_wait_time, backlog_wait_time_actual
_STATUS = struct.Struct("=11I")
STATUS_SIZE = _STATUS.size


@dataclass(frozen=True, slots=True)
class AuditStatus:
    mask: int = 0
    enabled: int = 0
    failure: int = 0
    pid: int = 0
    rate_limit: int = 0
    backlog_limit: int = 0
    lost: int = 0
    backlog: int = 0
    feature_bitmap: int = 0
    backlog_wait_time: int = 0
    backlog_wait_time_actual: int = 0

    def pack(self) -> bytes:
        return _STATUS.pack(
            self.mask, self.enabled, self.failure, self.pid, self.rate_limit,
            self.backlog_limit, self.lost, self.backlog, self.feature_bitmap,
            self.backlog_wait_time, self.backlog_wait_time_actual,
        )  # fmt: skip

    @classmethod
    def unpack(cls, data: bytes) -> AuditStatus:
        # Older kernels send a shorter struct (no backlog_wait_time_actual): pad with zeros.
        data = bytes(data[:STATUS_SIZE]).ljust(STATUS_SIZE, b"\0")
        return cls(*_STATUS.unpack(data))


# -- struct audit_rule_data --------------------------------------------------------------------
AUDIT_FILTER_EXIT = 0x04  # apply rule at syscall exit
AUDIT_FILTER_PREPEND = 0x10  # prepend to the list instead of appending
AUDIT_NEVER = 0
AUDIT_ALWAYS = 2
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64
AUDIT_MAX_KEY_LEN = 256

# fields
AUDIT_PID = 0
AUDIT_ARCH = 11
AUDIT_FILTERKEY = 210
# operators (fieldflags)
AUDIT_EQUAL = 0x40000000
AUDIT_NOT_EQUAL = 0x30000000

# include/uapi/linux/audit.h: __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE | EM_*
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

_RULE_HEAD = struct.Struct(f"=3I{AUDIT_BITMASK_SIZE}I{3 * AUDIT_MAX_FIELDS}II")
RULE_SIZE = _RULE_HEAD.size  # without the trailing string buffer


@dataclass(frozen=True, slots=True)
class AuditRule:
    """One filter rule: `(field, op, value)` conditions, a syscall set, an optional key."""

    flags: int  # the filter list (AUDIT_FILTER_EXIT), maybe | AUDIT_FILTER_PREPEND
    action: int  # AUDIT_ALWAYS or AUDIT_NEVER
    syscalls: frozenset[int] = frozenset()  # empty: every syscall
    conditions: tuple[tuple[int, int, int], ...] = ()  # (field, op, value) besides the key
    key: str | None = None

    def pack(self) -> bytes:
        mask = [0] * AUDIT_BITMASK_SIZE
        if self.syscalls:
            for nr in self.syscalls:
                mask[nr // 32] |= 1 << (nr % 32)
        else:
            mask = [0xFFFFFFFF] * AUDIT_BITMASK_SIZE
        fields, values, ops = [], [], []
        for fld, op, value in self.conditions:
            fields.append(fld)
            values.append(value & 0xFFFFFFFF)
            ops.append(op)
        buf = b""
        if self.key is not None:
            buf = self.key.encode()
            if len(buf) > AUDIT_MAX_KEY_LEN:
                raise ValueError("audit key too long")
            fields.append(AUDIT_FILTERKEY)
            values.append(len(buf))
            ops.append(AUDIT_EQUAL)
        n = len(fields)
        pad = [0] * (AUDIT_MAX_FIELDS - n)
        head = _RULE_HEAD.pack(
            self.flags, self.action, n, *mask, *fields, *pad, *values, *pad, *ops, *pad, len(buf)
        )
        return head + buf

    @classmethod
    def unpack(cls, data: bytes) -> AuditRule:
        """Parse a rule as AUDIT_LIST_RULES returns it. String fields other than the key
        (paths, subjects) are skipped; they only move the buffer offset."""
        head = _RULE_HEAD.unpack_from(data)
        flags, action, n = head[0:3]
        mask = head[3 : 3 + AUDIT_BITMASK_SIZE]
        base = 3 + AUDIT_BITMASK_SIZE
        fields = head[base : base + n]
        values = head[base + AUDIT_MAX_FIELDS : base + AUDIT_MAX_FIELDS + n]
        ops = head[base + 2 * AUDIT_MAX_FIELDS : base + 2 * AUDIT_MAX_FIELDS + n]
        buf = data[RULE_SIZE:]
        off = 0
        key: str | None = None
        conds: list[tuple[int, int, int]] = []
        for fld, value, op in zip(fields, values, ops, strict=True):
            if fld in _STRING_FIELDS:
                text = buf[off : off + value]
                off += value
                if fld == AUDIT_FILTERKEY:
                    key = text.decode("utf-8", "replace")
                continue
            conds.append((fld, op, value))
        if all(word == 0xFFFFFFFF for word in mask):
            syscalls: frozenset[int] = frozenset()
        else:
            syscalls = frozenset(
                w * 32 + b for w, word in enumerate(mask) for b in range(32) if word >> b & 1
            )
        return cls(flags, action, syscalls, tuple(conds), key)


# Fields whose value is a length into `buf`: LSM subject/object strings (13-17, 19-23),
# AUDIT_WATCH, AUDIT_DIR, AUDIT_EXE, AUDIT_FILTERKEY (kernel/auditfilter.c audit_krule_to_data).
_STRING_FIELDS = frozenset({13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 105, 107, 112, AUDIT_FILTERKEY})

# -- the syscalls lifewatch follows, per arch ----------------------------------------------
# x86_64: arch/x86/entry/syscalls/syscall_64.tbl; i386: syscall_32.tbl.
SYSCALLS_X86_64 = {
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "exit": 60,
    "exit_group": 231, "execveat": 322, "clone3": 435,
}  # fmt: skip
SYSCALLS_I386 = {
    "exit": 1, "fork": 2, "execve": 11, "clone": 120, "vfork": 190,
    "exit_group": 252, "execveat": 358, "clone3": 435,
}  # fmt: skip
ARCH_SYSCALLS: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: SYSCALLS_X86_64,
    AUDIT_ARCH_I386: SYSCALLS_I386,
}
ARCH_NAMES = {AUDIT_ARCH_X86_64: "b64", AUDIT_ARCH_I386: "b32"}


# clone(2) flags that matter for telling a process from a thread (include/uapi/linux/sched.h)
CLONE_PARENT = 0x00008000
CLONE_THREAD = 0x00010000
