"""Logs an operator can use: one line per event, `--log-format json` for journald and
collectors, repeated warnings rate-limited, and a client that goes away logged as one line
without a traceback (it is ordinary: a closed laptop, a killed `curl`)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NUMBERS = re.compile(r"[0-9]+")
REPEAT_WINDOW = 60.0  # seconds during which the same warning is logged once
# Exceptions that only mean the peer left; aiohttp logs them with a traceback otherwise.
DISCONNECTS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            out["traceback"] = self.formatException(record.exc_info)
        suppressed = getattr(record, "suppressed", None)
        if suppressed:
            out["suppressed"] = suppressed
        return json.dumps(out, ensure_ascii=False)


class RateLimit(logging.Filter):
    """The same warning (logger, level, and its text with numbers left out: the same source
    and reason, whatever pid or count) passes once per window; the next that passes says how
    many were dropped in between. Another source's warning is another message."""

    def __init__(self, window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, NUMBERS.sub("N", record.getMessage()))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.suppressed = last[1]
            record.msg = f"{record.getMessage()} (and {last[1]} more like it in {self.window:g} s)"
            record.args = None
        self._seen[key] = (now, 0)
        if len(self._seen) > 4096:  # bounded: hostile input must not grow it forever
            self._seen.clear()
        return True


class Disconnects(logging.Filter):
    """A peer that went away: one line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DISCONNECTS) or type(exc).__name__ in (
            "ClientConnectionResetError", "ClientConnectionError",
        ):  # fmt: skip
            record.msg = f"client went away: {type(exc).__name__}: {exc}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(Disconnects())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
