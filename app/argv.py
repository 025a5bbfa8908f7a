"""argv kept up to a byte cap: the one rule for /proc cmdline and audit records alike.

argv is attacker-controlled (design.md fact 14): a user may start a process with megabytes
of it, which kept whole drove the daemon from 209 MB to 1.5 GB. Below every layer that reads
argv (app/procfs.py, app/netlink/audit_records.py), so both apply the same rule.

The cap counts bytes as /proc/<pid>/cmdline holds them: each argument and its NUL. Whole
arguments are kept while they fit; the first that does not is cut at a UTF-8 character
boundary (never inside a multi-byte character) and the rest are dropped. A cut argv is a
`CutArgv`, a tuple that says so: it costs no memory per life (no extra field), and the
API writes it as `argv_truncated: true`.
"""

from __future__ import annotations

from collections.abc import Iterable

# Bytes of argv kept when the caller does not say (Config.argv_max is the daemon's setting):
# one page, what /proc/<pid>/cmdline itself showed of argv before Linux 4.2.
ARGV_MAX = 4096


class CutArgv(tuple[str, ...]):
    """An argv that was cut at the cap. Equal only to another CutArgv, so that a cut argv
    and a whole one with the same text never pass for each other (caches, interning)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is CutArgv and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((CutArgv, tuple(self)))


def is_cut(argv: tuple[str, ...]) -> bool:
    return type(argv) is CutArgv


def _decode(arg: bytes) -> str:
    # surrogateescape: bytes that are not UTF-8 survive as lone surrogates (the API's
    # encoder writes them as \udcXX escapes, app/api/jsontext.py).
    return arg.decode("utf-8", "surrogateescape")


def utf8_prefix(data: bytes, size: int) -> bytes:
    """The first `size` bytes or fewer, never ending inside a well-formed UTF-8 character."""
    if size >= len(data):
        return data
    end = size
    # Step back over continuation bytes (10xxxxxx) to the lead byte of the cut character.
    while end > 0 and data[end] & 0xC0 == 0x80 and size - end < 3:
        end -= 1
    if end < size:
        lead = data[end]
        need = 2 if lead >= 0xC0 else 1
        need = 3 if lead >= 0xE0 else need
        need = 4 if lead >= 0xF0 else need
        if lead < 0xC0 or end + need <= size:  # not a lead byte, or its character fits
            return data[:size]
    return data[:end]


def cap_argv(args: Iterable[bytes], limit: int, cut: bool = False) -> tuple[str, ...]:
    """argv from raw arguments, at most `limit` bytes counting one NUL per argument.

    `cut`: the caller knows more arguments existed than it passes (it read only part of
    them): the result is a CutArgv even if what it was given fits.
    """
    out: list[str] = []
    left = limit
    for arg in args:
        if len(arg) + 1 <= left:
            out.append(_decode(arg))
            left -= len(arg) + 1
            continue
        part = utf8_prefix(arg, left - 1) if left > 1 else b""
        if part:
            out.append(_decode(part))
        return CutArgv(out)
    return CutArgv(out) if cut else tuple(out)


def split_cmdline(data: bytes, limit: int) -> tuple[str, ...]:
    """argv from NUL-separated bytes (cmdline, PROCTITLE) read up to `limit` + 1 bytes:
    more than `limit` bytes means the argv went on, so it is cut."""
    more = len(data) > limit
    if more:
        data = data[: limit + 1]
    if data.endswith(b"\0"):
        data = data[:-1]
    if not data:
        return CutArgv() if more else ()
    return cap_argv(data.split(b"\0"), limit, cut=more)
