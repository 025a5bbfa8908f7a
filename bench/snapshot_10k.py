"""Snapshot of 10,000 running processes (target: under 1 s).

Run (root): .venv/bin/python -m bench.snapshot_10k [N]
Starts N sleeping processes (fork from this process, no exec: cheap), times
`procfs.snapshot()` five times, reports the median, then kills them all.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time

from app import procfs


def main(n: int = 10_000) -> None:
    children: list[int] = []
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # child: wait to be killed, touch nothing
                signal.pause()
                os._exit(0)
            children.append(pid)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            snap = procfs.snapshot()
            runs.append(time.perf_counter() - t0)
        total = len(snap)
        print(f"{total} processes in /proc ({n} started for the benchmark)")
        print(f"snapshot: median {statistics.median(runs):.3f} s, runs "
              f"{', '.join(f'{r:.3f}' for r in runs)} (target < 1 s for 10,000)")  # fmt: skip
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
