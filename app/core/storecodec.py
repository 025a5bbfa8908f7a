"""Lives and event fields as bytes for the database (app/core/store.py), without JSON.

The core does not speak JSON (pyproject.toml's import contracts): rows hold `marshal`
bytes of plain tuples, dicts, strings and numbers. marshal is the standard library's own
fast format (1.2 us to pack a life, 0.6 us to read one back, here); it is not meant for
untrusted input, and none comes here: the database is the daemon's own file in its own
state directory. Every value read back is checked for shape, so a damaged row raises
CodecError (the caller skips it and counts it), never a wrong life.
"""

from __future__ import annotations

import marshal
from typing import Any

from app.argv import CutArgv
from app.core.life import LifeView, exit_of

VERSION = 1  # the tuple layout below; a new layout gets a new number and a migration


class CodecError(ValueError):
    """A row whose bytes are not a life or fields this codec wrote."""


def pack_view(v: LifeView) -> bytes:
    ex = v.exit
    row = (
        VERSION, v.pid, v.start_ticks, v.start_slack, v.ppid, v.parent_ticks, v.comm,
        v.exe, tuple(v.argv), type(v.argv) is CutArgv, v.uid, v.born_at, v.died_at,
        None if ex is None else (ex.code, ex.signal, ex.core_dumped),
        v.cause, v.sources, v.pidfd_ino, v.canary, v.died_after,
    )  # fmt: skip
    return marshal.dumps(row)


_INT_OR_NONE = (int, type(None))
_NUM_OR_NONE = (int, float, type(None))
_STR_OR_NONE = (str, type(None))


def unpack_view(data: bytes) -> LifeView:
    try:
        t = marshal.loads(data)
        (version, pid, ticks, slack, ppid, parent, comm, exe, argv, cut, uid, born, died,
         ex, cause, sources, ino, canary, died_after) = t  # fmt: skip
    except (EOFError, ValueError, TypeError) as e:
        raise CodecError(f"not a life row: {e}") from None
    checks = (
        version == VERSION, type(pid) is int, type(ticks) is int, type(slack) is int,
        type(ppid) is int, isinstance(parent, _INT_OR_NONE), isinstance(comm, _STR_OR_NONE),
        isinstance(exe, _STR_OR_NONE), type(argv) is tuple,
        all(type(a) is str for a in argv), isinstance(uid, _INT_OR_NONE),
        isinstance(born, _NUM_OR_NONE), isinstance(died, _NUM_OR_NONE),
        ex is None or (type(ex) is tuple and len(ex) == 3), isinstance(cause, _STR_OR_NONE),
        type(sources) is int, isinstance(ino, _INT_OR_NONE), type(canary) is bool,
        isinstance(died_after, _NUM_OR_NONE),
    )  # fmt: skip
    if not all(checks):
        raise CodecError("a life row of an unexpected shape")
    exit = None if ex is None else exit_of(ex[0], ex[1], bool(ex[2]))
    return LifeView(
        pid, ticks, slack, ppid, parent, comm, exe, CutArgv(argv) if cut else argv, uid,
        born, died, exit, cause, sources, ino, canary, died_after,
    )  # fmt: skip


_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if depth > 4:
        return False
    if isinstance(value, list | tuple):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v, depth + 1) for k, v in value.items())
    return False


def pack_fields(fields: dict[str, Any] | None) -> bytes | None:
    return None if not fields else marshal.dumps(fields)


def unpack_fields(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        got = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as e:
        raise CodecError(f"not a fields row: {e}") from None
    if not isinstance(got, dict) or not _plain(got):
        raise CodecError("a fields row of an unexpected shape")
    return got
