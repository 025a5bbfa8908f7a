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


Flat = tuple[Any, ...]  # a LifeView as plain values (flat_view)


def flat_view(v: LifeView) -> Flat:
    """A life as a tuple marshal can write: the view's own fields, sliced (a plain tuple,
    made in C: this runs for every event), with the exit as a plain tuple. A cut argv (a
    tuple subclass marshal refuses, app/argv.py) is written as a list, and read back cut."""
    ex = v.exit
    if type(v.argv) is not tuple:
        v = v._replace(argv=list(v.argv))  # type: ignore[arg-type]
    return (*v[:11], None if ex is None else tuple(ex), *v[12:])


_INT_OR_NONE = (int, type(None))
_NUM_OR_NONE = (int, float, type(None))
_STR_OR_NONE = (str, type(None))


def view_of(t: Any) -> LifeView:
    """flat_view's tuple back; CodecError for anything else."""
    try:
        (pid, ticks, slack, ppid, parent, comm, exe, argv, uid, born, died,
         ex, cause, sources, ino, canary, died_after) = t  # fmt: skip
    except (ValueError, TypeError) as e:
        raise CodecError(f"not a life: {e}") from None
    cut = type(argv) is list
    if cut:
        argv = tuple(argv)
    checks = (
        type(pid) is int, type(ticks) is int, type(slack) is int,
        type(ppid) is int, isinstance(parent, _INT_OR_NONE), isinstance(comm, _STR_OR_NONE),
        isinstance(exe, _STR_OR_NONE), type(argv) is tuple,
        all(type(a) is str for a in argv), isinstance(uid, _INT_OR_NONE),
        isinstance(born, _NUM_OR_NONE), isinstance(died, _NUM_OR_NONE),
        ex is None or (type(ex) is tuple and len(ex) == 3), isinstance(cause, _STR_OR_NONE),
        type(sources) is int, isinstance(ino, _INT_OR_NONE), type(canary) is bool,
        isinstance(died_after, _NUM_OR_NONE),
    )  # fmt: skip
    if not all(checks):
        raise CodecError("a life of an unexpected shape")
    exit = None if ex is None else exit_of(ex[0], ex[1], bool(ex[2]))
    return LifeView(
        pid, ticks, slack, ppid, parent, comm, exe, CutArgv(argv) if cut else argv, uid,
        born, died, exit, cause, sources, ino, canary, died_after,
    )  # fmt: skip


def pack_view(v: LifeView) -> bytes:
    return marshal.dumps((VERSION, flat_view(v)))


def unpack_view(data: bytes) -> LifeView:
    try:
        version, flat = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as e:
        raise CodecError(f"not a life row: {e}") from None
    if version != VERSION:
        raise CodecError(f"a life row of layout {version!r}")
    return view_of(flat)


# An event in a chunk: (cursor, type, at, sources, flat life or None, fields or None).
EventRow = tuple[int, str, float, int, Flat | None, dict[str, Any] | None]


def pack_chunk(rows: list[EventRow]) -> bytes:
    """One commit's events as one blob: a row per commit, not per event, is what keeps the
    journal's cost per event low (docs/storage.md)."""
    return marshal.dumps((VERSION, rows))


def unpack_chunk(data: bytes) -> list[tuple[int, str, float, int, LifeView | None, Any]]:
    """A chunk's events; CodecError when the chunk is not one this codec wrote."""
    try:
        version, rows = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as e:
        raise CodecError(f"not a chunk: {e}") from None
    if version != VERSION or type(rows) is not list:
        raise CodecError("a chunk of an unexpected layout")
    out = []
    for row in rows:
        try:
            cursor, type_, at, sources, flat, fields = row
        except (ValueError, TypeError) as e:
            raise CodecError(f"not an event: {e}") from None
        if not (type(cursor) is int and type(type_) is str and type(at) in (int, float)
                and type(sources) is int and (fields is None or _plain(fields))):  # fmt: skip
            raise CodecError("an event of an unexpected shape")
        out.append((cursor, type_, at, sources, None if flat is None else view_of(flat), fields))
    return out


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
