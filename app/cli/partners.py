"""`lifewatch partners PID`: a table of a process's connections and the lives at their other
ends, with each peer's state; `--follow` then prints each partner's death as it comes."""

from __future__ import annotations

import argparse
import sys

from app.cli.tail import safe
from app.client import Lifewatch, LifewatchError


def table(rows: list[tuple[str, str, str]]) -> list[str]:
    head = ("CONNECTION", "PEER LIFE", "STATE")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(2)]
    return [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in [head, *rows]]


async def run_partners(args: argparse.Namespace) -> None:
    async with Lifewatch(args.url) as lw:
        try:
            me = await lw.me(args.pid)
            conns = await lw.partners(me)
            peers = sorted({p["id"] for c in conns for p in c["peers"]})
            states = {a.id: a.state for a in await lw.check(peers)} if peers else {}
        except LifewatchError as e:
            print(f"lifewatch: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        rows = []
        for c in conns:
            conn = safe(f"{c['proto']} {c['local']} -> {c['remote'] or '?'}")
            if not c["peers"]:
                rows.append((conn, "unknown", safe(c.get("reason", ""))))
            for p in c["peers"]:
                name = safe(f"{p['id']} ({p['comm'] or '?'})")
                rows.append((conn, name, states.get(p["id"], "unknown")))
        print(f"{me}: {len(conns)} connections")
        if rows:
            print("\n".join(table(rows)))
        if not args.follow:
            return
        async for ev in lw.partner_deaths(me):
            if ev.type == "died" and ev.life is not None:
                via = ", ".join(c["remote"] or "?" for c in (ev.partner or {}).get("via", []))
                print(f"{ev.at} partner died: {safe(ev.life['id'])} via {safe(via)}", flush=True)
            else:
                print(f"{ev.at} {ev.type}: {safe(str(ev.data.get('reason', '')))}", flush=True)
