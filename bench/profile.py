"""Where the daemon's CPU goes in a fork storm: py-spy samples a real `lifewatch serve`.

Run as root (gcc installed; py-spy comes with the test extras):

    .venv/bin/python -m bench.profile [--mode exec] [--sources audit,proc] [--seconds 5]
        [--top 25] [--raw FILE]

One daemon (as `bench.storm` starts it), the compiled forker on every core for `--seconds`,
py-spy recording the daemon's Python stacks (`--nonblocking`, 250 Hz) from the storm's start
until the daemon has drained it. Printed: the top entries by self time and by inclusive time,
as a share of all samples; the loop waiting in epoll (`select`/`Runner.run` self) is idle time
and is reported separately. The raw folded stacks are kept with `--raw` for other cuts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.audit_forks import restore, status
from bench.storm import Daemon, build_forker, cpu_seconds, storm, thread_cpu

# Leaves that mean "waiting": uvloop's run loop (epoll, in C: sampled as Runner.run's own
# time), the default loop's select, the store's writer thread and the executor waiting.
IDLE = (
    "Runner.run (asyncio/runners.py",
    "select (selectors.py",
    "Condition.wait (threading.py",
    "_worker (concurrent/futures/thread.py",
)


def frame_name(frame: str) -> str:
    """`func (file.py:line)` -> `func (file.py)`: lines of one function counted together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarise(raw: str, top: int) -> str:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        total += n
        leaf = frames[-1]
        if leaf.startswith(IDLE):
            idle += n
            continue
        self_t[leaf] += n
        for f in set(frames):
            incl[f] += n
    busy = total - idle
    out = [f"{total} samples, {idle} idle ({100 * idle / max(total, 1):.1f} %), {busy} busy", ""]
    out.append("self time, % of busy samples:")
    out += [f"  {100 * n / max(busy, 1):5.1f} %  {f}" for f, n in self_t.most_common(top)]
    out.append("")
    out.append("inclusive time, % of busy samples (app/ frames):")
    ours = [(f, n) for f, n in incl.most_common() if "app/" in f][:top]
    out += [f"  {100 * n / max(busy, 1):5.1f} %  {f}" for f, n in ours]
    return "\n".join(out)


async def main(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("run as root")
    build_forker()
    found = await status()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        d = Daemon(args.sources, tmp)
        spy: subprocess.Popen[bytes] | None = None
        try:
            await d.ready()
            raw = tmp / "stacks.txt"
            cpu0 = cpu_seconds(d.proc.pid)
            main0, other0 = thread_cpu(d.proc.pid)
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(d.proc.pid),
                 "-r", "250", "--format", "raw", "-o", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            await asyncio.sleep(0.5)
            lives = await storm(args.mode, args.seconds, tmp)
            node = await d.drained()
            cpu = cpu_seconds(d.proc.pid) - cpu0
            main1, other1 = thread_cpu(d.proc.pid)
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            await asyncio.to_thread(spy.wait, 30)
            text = raw.read_text()
            if args.raw:
                Path(args.raw).write_text(text)
            print(f"fork+{args.mode}, sources {args.sources}: {len(lives)} lives, "
                  f"{cpu / len(lives) * 1e6:.1f} µs of daemon CPU per life (main thread "
                  f"{(main1 - main0) / len(lives) * 1e6:.1f}, other threads "
                  f"{(other1 - other0) / len(lives) * 1e6:.1f})")  # fmt: skip
            print("tracker:", json.dumps(node.get("tracker", {})))
            print(summarise(text, args.top))
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
            await d.stop()
            await restore(found)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still restore the kernel
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="exec", choices=["exit", "exec"])
    ap.add_argument("--sources", default="audit,proc")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--raw")
    asyncio.run(main(ap.parse_args()))
