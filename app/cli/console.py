"""`lifewatch ps` (the registry as a tree) and `lifewatch watch NAME` (a watch's changes)."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from app.cli.http import fetch, stream
from app.cli.tail import Paint, clock_of, emit, safe

Life = dict[str, Any]


def alive_lives(base: str) -> list[Life]:
    out: list[Life] = []
    after: str | None = None
    while True:
        q = {"state": "alive", "limit": "10000", **({"after": after} if after else {})}
        page = fetch(f"{base}/v1/lives?{urllib.parse.urlencode(q)}")
        out.extend(page["lives"])
        after = page["next"]
        if not after:
            return out


def age(start: str, now: datetime) -> str:
    s = (now - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m"
    if s < 86400:
        return f"{s // 3600:.0f}h{s % 3600 // 60:02.0f}"
    return f"{s // 86400:.0f}d{s % 86400 // 3600:.0f}h"


def forest(lives: Iterable[Life]) -> tuple[dict[int, Life], dict[int, list[Life]], list[Life]]:
    """(lives by pid, children by parent pid, roots): a life whose parent is not among
    the lives is a root."""
    by_pid = {life["pid"]: life for life in lives}
    kids: dict[int, list[Life]] = {}
    roots: list[Life] = []
    for life in by_pid.values():
        if life["ppid"] in by_pid and life["ppid"] != life["pid"]:
            kids.setdefault(life["ppid"], []).append(life)
        else:
            roots.append(life)
    return by_pid, kids, roots


def with_ancestors(by_pid: dict[int, Life], keep: Callable[[Life], bool]) -> set[int]:
    shown: set[int] = set()
    for life in by_pid.values():
        if keep(life):
            node: Life | None = life
            while node is not None and node["pid"] not in shown:
                shown.add(node["pid"])
                node = by_pid.get(node["ppid"])
    return shown


def row(life: Life, guide: str, paint: Paint, width: int, now: datetime) -> str:
    uid = life.get("uid")
    head = f"{life['pid']:>7} {uid if uid is not None else '?':>5} {age(life['start'], now):>6}  "
    cmd = safe(life.get("comm") or "?")
    args = safe(" ".join(life.get("argv") or []))
    rest = args[len(cmd) :] if args.startswith(cmd) else (" " + args if args else "")
    body = (cmd + rest)[: max(10, width - len(head) - len(guide))]
    canary = paint("35", " [canary]") if life.get("canary") else ""
    return head + paint("2", guide) + paint("1", body[: len(cmd)]) + paint("2", body[len(cmd) :]) \
        + canary  # fmt: skip


def tree_lines(
    lives: Iterable[Life],
    keep: Callable[[Life], bool],
    paint: Paint,
    width: int,
    now: datetime | None = None,
) -> list[str]:
    """The lives as a forest by ppid; with a filter, matches and their ancestors."""
    when = now or datetime.now(UTC)
    by_pid, kids, roots = forest(lives)
    shown = with_ancestors(by_pid, keep)
    lines = [paint("2", f"{'PID':>7} {'UID':>5} {'AGE':>6}  COMMAND")]

    def walk(life: Life, prefix: str, last: bool, depth: int) -> None:
        guide = "" if depth == 0 else prefix + ("└─ " if last else "├─ ")
        lines.append(row(life, guide, paint, width, when))
        children = sorted((c for c in kids.get(life["pid"], []) if c["pid"] in shown),
                          key=lambda c: c["pid"])  # fmt: skip
        nxt = "" if depth == 0 else prefix + ("   " if last else "│  ")
        for i, c in enumerate(children):
            walk(c, nxt, i == len(children) - 1, depth + 1)

    for r in sorted(roots, key=lambda x: x["pid"]):
        if r["pid"] in shown:
            walk(r, "", True, 0)
    return lines


def matcher(args: argparse.Namespace) -> Callable[[Life], bool]:
    pattern = (args.pattern or "").lower()

    def keep(life: Life) -> bool:
        if not args.all and (life["pid"] == 2 or life["ppid"] == 2):
            return False  # kernel threads
        if life.get("canary") and not args.all:
            return False
        if not pattern:
            return True
        hay = f"{life['pid']} {life.get('comm') or ''} {life.get('exe') or ''} "
        hay += " ".join(life.get("argv") or [])
        return pattern in hay.lower()

    return keep


def run_ps(args: argparse.Namespace) -> None:
    paint = Paint(Paint.wanted(args.color))
    lives = alive_lives(args.url)
    width = shutil.get_terminal_size((160, 40)).columns if sys.stdout.isatty() else 10_000
    for line in tree_lines(lives, matcher(args), paint, width):
        if not emit(line):
            return


def watch_line(w: dict[str, Any], paint: Paint, at: str | None = None) -> str:
    state = paint("1;32" if w["state"] == "running" else "1;31", w["state"])
    bounds = f"{w.get('min')}..{w.get('max') if w.get('max') is not None else '∞'}"
    ok = "" if w.get("ok") else paint("33", " outside min..max")
    since = clock_of(w.get("since"))
    return f"{paint('2', clock_of(at))} {safe(w.get('name') or w.get('watch'))}: {state} " \
        f"count {w['count']} ({bounds}){ok} since {since}"  # fmt: skip


async def run_watch(args: argparse.Namespace) -> None:
    """Print the watch now, then one line per change until interrupted."""
    paint = Paint(Paint.wanted(args.color))
    name = urllib.parse.quote(args.name, safe="")
    node = fetch(f"{args.url}/v1/node")
    w = fetch(f"{args.url}/v1/watches/{name}")
    emit(watch_line(w, paint, datetime.now(UTC).isoformat()))
    for life in w["lives"]:
        comm = safe(life.get("comm") or "?")
        emit(paint("2", f"{'':12}   {life['pid']:>7} {comm}  {safe(life['id'])}"))
    if args.once:
        return

    def warn(text: str) -> None:
        print(f"lifewatch: {text}", file=sys.stderr)

    events_ = stream(args.url, {"types": "watch"}, node["cursor"], warn)
    async with contextlib.aclosing(events_) as events:
        async for ev in events:
            if not print_change(args.name, ev, paint):
                return


def print_change(name: str, ev: dict[str, Any], paint: Paint) -> bool:
    """Print a watch event about `name`; False when there is nothing more to follow."""
    if ev["type"] == "reset":
        return emit(paint("33", "(stream reset: the daemon restarted or we fell behind)"))
    if ev.get("watch") != name:
        return True
    life = ev.get("life")
    who = f" · {ev['change']}" + (f" {life['pid']} {safe(life.get('comm') or '?')}" if life else "")
    ok = emit(watch_line(ev, paint, ev["at"]) + paint("2", who))
    return ok and ev["change"] != "removed"
