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
import zlib
from typing import Any

from app.argv import CutArgv
from app.core.life import Exit, Life, LifeView, exit_of

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


_NUM = (int, float)


def view_of(t: Any) -> LifeView:
    """flat_view's tuple back; CodecError for anything else. Checked field by field in
    plain comparisons: a restart reads 100,000 lives and more (bench/restart.py)."""
    if type(t) is not tuple or len(t) != 17:
        raise CodecError("not a life")
    (pid, ticks, slack, ppid, parent, comm, exe, argv, uid, born, died,
     ex, cause, sources, ino, canary, died_after) = t  # fmt: skip
    if not (
        type(pid) is int and type(ticks) is int and type(slack) is int and type(ppid) is int
        and type(sources) is int and type(canary) is bool
        and (parent is None or type(parent) is int) and (uid is None or type(uid) is int)
        and (ino is None or type(ino) is int) and (comm is None or type(comm) is str)
        and (exe is None or type(exe) is str) and (cause is None or type(cause) is str)
        and (born is None or type(born) in _NUM) and (died is None or type(died) in _NUM)
        and (died_after is None or type(died_after) in _NUM)
        and (ex is None or (type(ex) is tuple and len(ex) == 3))
    ):  # fmt: skip
        raise CodecError("a life of an unexpected shape")
    cut = type(argv) is list
    if cut:
        argv = tuple(argv)
    elif type(argv) is not tuple:
        raise CodecError("a life whose argv is not a list of strings")
    try:
        "".join(argv)  # every argument a str (TypeError otherwise), in C
    except TypeError:
        raise CodecError("a life whose argv is not a list of strings") from None
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


def fast_view(t: Flat) -> LifeView:
    """flat_view's tuple back, unchecked: only for a chunk whose checksum held (read_chunk),
    i.e. bytes this codec wrote. A restart reads 100,000 lives and more this way."""
    argv, ex = t[7], t[11]
    if type(argv) is list:
        t = (*t[:7], CutArgv(argv), *t[8:])
    if ex is not None:
        t = (*t[:11], exit_of(ex[0], ex[1], bool(ex[2])), *t[12:])
    return LifeView._make(t)


def life_of(v: LifeView | Flat) -> Life:
    """A Life from its view (or from a checked chunk's flat tuple), slot by slot: a restart
    makes 100,000 of them, and Life's own constructor would intern strings marshal has
    already shared (one copy per chunk)."""
    life = Life.__new__(Life)
    (life.pid, life.start_ticks, life.start_slack, life.ppid, life.parent_ticks, life.comm,
     life.exe, argv, life.uid, life.born_at, life.died_at, ex, life.cause,
     life.sources, life.pidfd_ino, life.canary, life.died_after) = v  # fmt: skip
    life.argv = CutArgv(argv) if type(argv) is list else argv
    life.exit = ex if ex is None or type(ex) is Exit else exit_of(ex[0], ex[1], bool(ex[2]))
    life.execs = 0
    return life


# An event in a chunk: (cursor, type, at, sources, flat life or None, fields or None).
EventRow = tuple[int, str, float, int, Flat | None, dict[str, Any] | None]


def pack_chunk(rows: list[EventRow]) -> bytes:
    """One commit's events as one blob, after a CRC-32 of it: a row per commit, not per
    event, is what keeps the journal's cost per event low (docs/storage.md); the checksum
    lets a restart trust the bytes without checking every field of every life."""
    data = marshal.dumps((VERSION, rows))
    return zlib.crc32(data).to_bytes(4, "big") + data


def read_chunk(blob: bytes) -> list[EventRow]:
    """A chunk's rows (lives still flat); CodecError when the checksum or layout fails."""
    data = blob[4:]
    if len(blob) < 4 or zlib.crc32(data) != int.from_bytes(blob[:4], "big"):
        raise CodecError("a chunk whose checksum does not hold (damaged)")
    try:
        version, rows = marshal.loads(data)
    except (EOFError, ValueError, TypeError) as e:
        raise CodecError(f"not a chunk: {e}") from None
    if version != VERSION or type(rows) is not list:
        raise CodecError("a chunk of an unexpected layout")
    return rows


def unpack_chunk(blob: bytes) -> list[tuple[int, str, float, int, LifeView | None, Any]]:
    """A chunk's events, lives as LifeViews."""
    return [(c, t, a, s, None if f is None else fast_view(f), fields)
            for c, t, a, s, f, fields in read_chunk(blob)]  # fmt: skip


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
