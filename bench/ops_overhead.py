"""What watches and event counting cost per life: born + exec + died through the registry,
with and without the watch engine (N watches) and the metrics' event counter subscribed.

Run: .venv/bin/python -m bench.ops_overhead [LIVES] [WATCHES]
Prints lives/s for each setup and the cost per life in microseconds.
"""

from __future__ import annotations

import asyncio
import sys
import time

from app.core.identity import NodeIdentity, TickClock
from app.core.journal import Journal
from app.core.life import Life, SourceSet, exit_of
from app.core.registry import Registry
from app.core.watches import WatchEngine, WatchSpec

PROC = SourceSet.PROC


async def run(n: int, watches: int, ops: bool) -> float:
    node = NodeIdentity("vm", "boot", TickClock(1_700_000_000, 100), "kernel")
    reg = Registry(node, Journal(50_000), history=100_000)
    engine = None
    if ops:
        # Like a real node's: a few programs by name or path, one by arguments; 1 life in
        # 50 (prog7) belongs to a watch.
        specs = {f"w{i}": WatchSpec(comm=f"daemon{i}") for i in range(watches - 2)}
        specs["by-exe"] = WatchSpec(exe="/usr/sbin/daemon*")
        specs["prog7"] = WatchSpec(comm="prog7", max=3)
        engine = WatchEngine(reg, specs)
        engine.start()
        # (The metrics' event counts are kept by the journal itself as it appends: no reader.)
    t0 = time.perf_counter()
    batch = 1000
    for base in range(0, n, batch):
        for i in range(base, base + batch):
            life = Life(10_000 + i, 1000 + i, 1, f"prog{i % 50}", PROC, born_at=1.0)
            reg.born(life, PROC)
            life.argv = (f"prog{i % 50}", "--flag")
            reg.exec(life, PROC, 1.0)
            reg.died(life, exit_of(0, None, False), 2.0, "exit", PROC)
        await asyncio.sleep(0)  # let the subscribers drain, as the event loop would
    while engine is not None and reg.journal.subscribers and _pending(reg):
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - t0
    if engine is not None:
        await engine.stop()
    return elapsed


def _pending(reg: Registry) -> bool:
    return any(s.queue or s.pending for s in reg.journal._subs)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    watches = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    base = min(asyncio.run(run(n, watches, False)) for _ in range(3))
    ops = min(asyncio.run(run(n, watches, True)) for _ in range(3))
    print(f"{n} lives (born+exec+died), {watches} watches")
    print(f"  registry alone:          {n / base:>10,.0f} lives/s")
    print(f"  + watches + counter:     {n / ops:>10,.0f} lives/s")
    print(f"  added cost per life:     {(ops - base) / n * 1e6:>10.2f} us")


if __name__ == "__main__":
    main()
