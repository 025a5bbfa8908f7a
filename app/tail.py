"""`lifewatch tail`: follow the stream, one line per event, resuming after disconnects."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlencode

import aiohttp


def format_event(ev: dict[str, Any]) -> str:
    life = ev.get("life")
    head = f"{ev['cursor']} {ev['at']} {ev['type']:<8}"
    if life is None:
        rest = {k: v for k, v in ev.items() if k not in ("cursor", "at", "type")}
        return f"{head} {json.dumps(rest)}"
    text = f"{head} {life['id']} {life['comm'] or '?'}"
    if ev["type"] == "exec":
        text += " " + " ".join(life["argv"])[:120]
    if ev["type"] == "died":
        ex = life["exit"]
        if ex is None:
            text += f" exit unknown ({life['cause']})"
        elif ex["signal"]:
            text += f" killed by signal {ex['signal']}" + (" (core)" if ex["core_dumped"] else "")
        else:
            text += f" exit {ex['code']}"
    return text


async def run_tail(args: argparse.Namespace) -> None:
    params = {k: str(v) for k in ("types", "pid", "comm", "exe", "life")
              if (v := getattr(args, k)) is not None}  # fmt: skip
    after: int | None = args.after
    async with aiohttp.ClientSession() as session:
        while True:
            query = dict(params, **({"after": str(after)} if after is not None else {}))
            url = f"{args.url}/v1/stream?{urlencode(query)}"
            try:
                async with session.ws_connect(url, heartbeat=30) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        ev = json.loads(msg.data)
                        after = ev["cursor"]
                        print(msg.data if args.json else format_event(ev), flush=True)
            except aiohttp.WSServerHandshakeError as e:
                print(f"lifewatch: {e.status} {e.message}", file=sys.stderr)
                raise SystemExit(2) from None
            except aiohttp.ClientError as e:
                print(f"lifewatch: stream lost ({e}); reconnecting", file=sys.stderr)
            await asyncio.sleep(1)
