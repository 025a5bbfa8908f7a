"""Record real proc connector datagrams for the decoder tests, tests/unit/test_cn_proc.py.

A script run by hand, as root, from the repository's root (pytest does not collect it):

    .venv/bin/python tests/kernel/record_cn_proc.py tests/data/cn_proc

writes `<out>.hex` (one datagram per line, hex) and `<out>.golden.json` (pyroute2's
ProcEventMarshal parse of each, the reference the fast decoder is checked against). Only
datagrams about the processes this script starts are kept.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from pyroute2.netlink.connector.cn_proc import ProcEventMarshal

from app.core.config import Config
from app.netlink.cn_proc import decode
from app.sources.proc import ProcConnectorSource

SCENARIOS = [
    ["sh", "-c", "exit 3"],
    ["sh", "-c", "kill -TERM $$"],
    ["sh", "-c", "kill -SEGV $$"],
    ["sh", "-c", "sleep 5 & wait"],
    [
        sys.executable,
        "-c",
        "import threading; t=threading.Thread(target=len, args=('',)); t.start(); t.join()",
    ],
]


class _Null:
    def submit(self, obs: object) -> None:
        pass


async def record() -> list[bytes]:
    raw: list[bytes] = []
    src = ProcConnectorSource(Config().proc_settings(), tap=raw.append)
    await src.start(_Null())
    pids: set[int] = set()
    for argv in SCENARIOS:
        p = subprocess.Popen(argv)
        pids.add(p.pid)
        if argv[-1].endswith("wait"):
            await asyncio.sleep(0.2)
            subprocess.run(["pkill", "-KILL", "-P", str(p.pid), "sleep"], check=False)
        p.wait()
    p = subprocess.Popen(["sleep", "5"])
    pids.add(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    await asyncio.sleep(0.2)
    await src.stop()
    keep = []
    for data in raw:
        for ev in decode(data):
            fields = ev._asdict()
            related = {fields.get(k) for k in ("parent_tgid", "child_tgid", "process_tgid")}
            if related & pids or any(fields.get("parent_tgid") == q for q in pids):
                keep.append(data)
                break
    return keep


def main() -> None:
    out = Path(sys.argv[1])
    keep = asyncio.run(record())
    out.with_suffix(".hex").write_text("".join(d.hex() + "\n" for d in keep))
    marshal = ProcEventMarshal()
    golden = []
    for d in keep:
        for msg in marshal.parse(d):
            golden.append({k: v for k, v in msg.items() if k not in ("header", "event")})
    out.with_suffix(".golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"{len(keep)} datagrams -> {out}.hex")


if __name__ == "__main__":
    main()
