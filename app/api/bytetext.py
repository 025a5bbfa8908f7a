"""argv, comm and exe as valid Unicode for JSON answers, reversibly, when their bytes are not UTF-8.

The core keeps them as read from /proc and audit, decoded with surrogateescape: a byte that is
not UTF-8 is a lone surrogate (U+DC80..U+DCFF), which no strict JSON parser accepts (issue 10:
one `sleep\\xff\\xfe` made orjson fail on every stream message). The rule, for clients, is in
docs/security.md, "Bytes that are not UTF-8": a field that holds such bytes is written with
each backslash doubled and each such byte as `\\xHH`, and the life names it in
`bytes_escaped`. Valid UTF-8 is written as is and costs nothing here.
"""

from __future__ import annotations

from typing import Any

FIELDS = ("comm", "exe", "argv")  # in the order `bytes_escaped` lists them


def escape(text: str) -> str:
    """`text` with `\\` as `\\\\` and each undecodable byte as `\\xHH` (lowercase hex)."""
    doubled = text.replace("\\", "\\\\")
    try:
        raw = doubled.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A surrogate outside U+DC80..U+DCFF cannot come from decoding bytes; should one get
        # here, its UTF-8-like bytes are escaped too, so the answer stays valid.
        raw = doubled.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def unescape(text: str) -> bytes:
    """The bytes `escape` was given (as UTF-8 with surrogateescape): what a client does."""
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and text.startswith("\\", i + 1):
            out += b"\\"
            i += 2
        elif c == "\\" and text.startswith("x", i + 1):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += c.encode()
            i += 1
    return bytes(out)


def _not_utf8(text: str | None) -> bool:
    if text is None or text.isascii():  # isascii is a flag read: the common case is free
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def escape_life(life: dict[str, Any]) -> dict[str, Any]:
    """`life` (a life's JSON object, or its head) with comm, exe and argv escaped where they
    hold bytes that are not UTF-8, and `bytes_escaped` naming those fields; `life` itself,
    untouched, when none do."""
    argv = life["argv"]
    if all(map(str.isascii, argv)) and not _not_utf8(life["comm"]) and not _not_utf8(life["exe"]):
        return life
    escaped = [
        k for k in FIELDS if (any(map(_not_utf8, life[k])) if k == "argv" else _not_utf8(life[k]))
    ]
    if not escaped:
        return life
    out = dict(life)
    for k in escaped:
        out[k] = [escape(a) for a in life[k]] if k == "argv" else escape(life[k])
    out["bytes_escaped"] = escaped
    return out


def scrub(obj: Any) -> Any:
    """`obj` with every string that is not valid UTF-8 escaped as `escape` does: the last
    resort of jsontext.dumps for a string outside argv, comm and exe (none is expected), so
    that an answer is valid JSON whatever it holds. Not flagged, so not reversible."""
    if isinstance(obj, str):
        return escape(obj) if _not_utf8(obj) else obj
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    return obj
