"""`lifewatch tail`: follow the stream, one colored line per event, resuming after disconnects."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
from datetime import datetime
from typing import Any

from app.cli.http import stream

# ANSI SGR codes per event type: births green, execs blue, deaths plain (red when not clean),
# losses red, repairs yellow, watches magenta.
TYPE_COLORS = {"born": "32", "exec": "34", "died": "37", "gap": "1;31", "reset": "1;31",
               "resync": "33", "source": "33", "clock": "33", "snapshot": "33",
               "watch": "35"}  # fmt: skip


# What a process controls (comm, argv, exe) may hold newlines, terminal escapes or bidi
# overrides: shown escaped, so a line stays one line and cannot repaint the terminal.
# A backslash is doubled, so `\n` typed in an argv does not read as an escaped newline.
_UNSAFE = re.compile(
    "[\\\\\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def safe(text: object) -> str:
    """`text` for a terminal: control and bidi characters escaped as in Python literals."""
    return _UNSAFE.sub(_escape, str(text))


class Paint:
    """ANSI colors, or nothing when off (pipes, NO_COLOR, --color never)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.on and code and text else text

    @staticmethod
    def wanted(mode: str, stream: Any = sys.stdout) -> bool:
        if mode == "always":
            return True
        if mode == "never":
            return False
        return bool(stream.isatty()) and not os.environ.get("NO_COLOR")


def clock_of(at: str | None) -> str:
    """HH:MM:SS.mmm in local time, from the API's ISO date."""
    if not at:
        return " " * 12
    when = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone()
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def exit_text(life: dict[str, Any]) -> tuple[str, bool]:
    """('exit 0' | 'killed by SIGKILL' | 'exit unknown (resync)', whether it is bad)."""
    ex = life.get("exit")
    if ex is None:
        return f"exit unknown ({life.get('cause') or '?'})", True
    if ex.get("signal"):
        sig = ex["signal"]
        core = " (core dumped)" if ex.get("core_dumped") else ""
        return f"killed by {signal_name(sig)}{core}", True
    return f"exit {ex.get('code')}", ex.get("code") != 0


def _lifetime(life: dict[str, Any]) -> str:
    try:
        born = datetime.fromisoformat(life["born_at"].replace("Z", "+00:00"))
        died = datetime.fromisoformat(life["died_at"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, TypeError, ValueError):
        return ""
    s = (died - born).total_seconds()
    return f" after {s * 1000:.0f} ms" if s < 1 else f" after {s:.1f} s"


def format_event(ev: dict[str, Any], paint: Paint | None = None) -> str:
    """One line: time, type, pid, comm, then what the type says."""
    p = paint or Paint(False)
    kind = ev.get("type", "?")
    head = f"{p('2', clock_of(ev.get('at')))} {p(TYPE_COLORS.get(kind, ''), f'{kind:<8}')}"
    life = ev.get("life")
    if kind == "watch":
        tail = f" · {ev.get('change')}" + (f" pid {life['pid']}" if life else "")
        name = safe(ev.get("watch"))
        bounds = "" if ev.get("ok", True) else p("33", " outside min..max")
        state = p("32" if ev.get("state") == "running" else "31", str(ev.get("state")))
        return f"{head} {name}: {state} ({ev.get('count')}){bounds}{p('2', tail)}"
    if life is None:
        rest = {k: v for k, v in ev.items() if k not in ("cursor", "at", "type", "sources")}
        text = safe(" ".join(f"{k}={v}" for k, v in rest.items() if v not in (None, "")))
        return f"{head} {text}"
    comm = safe(life.get("comm") or "?")
    text = f"{head} {life['pid']:>7} {p('1', f'{comm:<15}')}"
    if kind == "born":
        text += p("2", f" ppid {life.get('ppid')}" + (" (found late)" if ev.get("late") else ""))
    elif kind == "exec":
        text += " " + safe(" ".join(life.get("argv") or [life.get("exe") or ""])[:160])
    elif kind == "died":
        what, bad = exit_text(life)
        text += " " + p("1;31" if bad else "32", what) + p("2", _lifetime(life))
    if life.get("canary"):
        text += p("2", " [canary]")
    return text + " " + p("2", safe(life.get("id", "")))


async def run_tail(args: argparse.Namespace) -> None:
    params = {k: str(v) for k in ("types", "pid", "comm", "exe", "life")
              if (v := getattr(args, k, None)) is not None}  # fmt: skip
    if getattr(args, "no_canary", False):
        params["canary"] = "false"
    paint = Paint(Paint.wanted(getattr(args, "color", "auto")))
    errors = Paint(Paint.wanted(getattr(args, "color", "auto"), sys.stderr))

    def warn(text: str) -> None:
        print(errors("33", f"lifewatch: {text}"), file=sys.stderr)

    async with contextlib.aclosing(stream(args.url, params, args.after, warn)) as events:
        async for ev in events:
            if not emit(json.dumps(ev) if args.json else format_event(ev, paint)):
                return


def emit(line: str) -> bool:
    """Print one line now; False when the reader went away (`| head`): stop quietly."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True
