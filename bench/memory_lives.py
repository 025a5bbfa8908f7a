"""RSS per life held in the registry, with 100,000 synthetic lives (target <= 500 B).

Run: .venv/bin/python -m bench.memory_lives [N]
The lives look like a real node's: a few hundred programs (comm, exe) shared by many
processes, each with its own argv. Half are alive, half dead in the history.
"""

from __future__ import annotations

import gc
import sys
import time

from app.core.identity import NodeIdentity, TickClock
from app.core.journal import Journal
from app.core.life import Life, SourceSet, exit_of
from app.core.registry import Registry


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main(n: int = 100_000) -> None:
    node = NodeIdentity("vm", "boot", TickClock(1_700_000_000, 100), "kernel")
    # The journal is bounded separately (journal_size); here it holds one event.
    reg = Registry(node, Journal(1), history=n)
    programs = [(f"prog{i}", f"/usr/bin/prog{i}") for i in range(300)]
    gc.collect()
    before = rss_bytes()
    for i in range(n):
        comm, exe = programs[i % len(programs)]
        life = Life(
            1000 + i, 50_000 + i, 1, comm, SourceSet.AUDIT | SourceSet.PROC,
            exe=exe, argv=(exe, f"--id={i}"), uid=1000, born_at=time.time(),
        )  # fmt: skip
        reg.born(life, SourceSet.AUDIT)
        if i % 2:
            reg.died(life, exit_of(0, None), time.time(), "exit", SourceSet.PROC)
    gc.collect()
    after = rss_bytes()
    per = (after - before) / n
    print(f"lives: {n} ({len(reg.alive)} alive, {len(reg.dead)} dead)")
    print(f"rss growth: {(after - before) / 1e6:.1f} MB = {per:.0f} bytes per life (target <= 500)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
