"""`lifewatch history`: dead lives of the whole retained history (every boot the database
keeps), oldest boot first, one line each; pages through GET /v1/lives?since=…"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import urlencode

from app.cli.http import fetch


def add_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--since", default="0", help="died at or after (ISO date or epoch s)")
    c.add_argument("--until", help="died before (ISO date or epoch s)")
    c.add_argument("--comm", help="only lives with this comm")
    c.add_argument("--exe", help="only lives with this executable")
    c.add_argument("--limit", type=int, default=0, help="print at most this many (0: all)")
    c.add_argument("--json", action="store_true", help="print each life as JSON")


def how(life: dict[str, Any]) -> str:
    ex = life.get("exit")
    if ex and ex.get("signal"):
        return f"signal {ex['signal']}"
    if ex:
        return f"exit {ex['code']}"
    between = life.get("died_between")
    if between:
        return f"{life['cause']} between {between[0]} and {between[1]}"
    return str(life.get("cause"))


def line(life: dict[str, Any]) -> str:
    return (f"{life['died_at']}  {life['id']}  {life['comm']}  {how(life)}  "
            f"boot {life['boot_id'][:8]}")  # fmt: skip


def run_history(args: argparse.Namespace) -> None:
    try:
        _history(args)
    except BrokenPipeError:  # `lifewatch history | head`: the reader has had enough
        sys.stderr.close()


def _history(args: argparse.Namespace) -> None:
    query: dict[str, str] = {"since": args.since, "limit": "1000"}
    for key in ("until", "comm", "exe"):
        if getattr(args, key) is not None:
            query[key] = getattr(args, key)
    printed = 0
    while True:
        page = fetch(f"{args.url}/v1/lives?{urlencode(query)}")
        for life in page["lives"]:
            print(json.dumps(life) if args.json else line(life))
            printed += 1
            if args.limit and printed >= args.limit:
                return
        if not page["next"]:
            return
        query["after"] = page["next"]
