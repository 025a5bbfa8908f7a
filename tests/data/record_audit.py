"""Record real kernel audit output for the parser tests, tests/unit/test_audit_records.py.

A script run by hand, as root, from the repository's root (pytest does not collect it):

    .venv/bin/python tests/data/record_audit.py tests/data/audit_workload

Runs lifewatch's audit source in unicast mode with a raw tap, and a multicast listener next
to it, while `tests/kernel/audit_helper.py` runs its workload. Writes:

- `<out>.unicast.hex`: every datagram of the unicast stream, one hex line each;
- `<out>.multicast.hex`: the same records as the multicast group delivered them;
- `<out>.truth.json`: the helper's ground truth (pids, parents, argv, exit codes, thread tids),
  which is what the tests expect the parser, assembler and event translation to find.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from app.core.config import Config
from app.netlink.audit_reader import RecordSocket
from app.sources.audit import AuditSource
from app.sources.observations import Observation

HELPER = Path(__file__).resolve().parent.parent / "kernel" / "audit_helper.py"


class Null:
    def submit(self, obs: Observation) -> None:
        pass


async def record(out: Path) -> None:
    uni: list[bytes] = []
    multi: list[bytes] = []
    listener = RecordSocket(multicast=True, rcvbuf=8 << 20)
    loop = asyncio.get_running_loop()

    def on_multi() -> None:
        while True:
            try:
                multi.append(listener.recv())
            except BlockingIOError:
                return

    loop.add_reader(listener.fileno(), on_multi)
    source = AuditSource(Config(audit_mode="unicast").audit_settings())
    source.tap = uni.append
    await source.start(Null())
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), stdout=subprocess.PIPE
        )
        truth, _ = await proc.communicate()
        await asyncio.sleep(0.5)
    finally:
        await source.stop()
        loop.remove_reader(listener.fileno())
        listener.close()
    Path(f"{out}.unicast.hex").write_text("".join(d.hex() + "\n" for d in uni))
    Path(f"{out}.multicast.hex").write_text("".join(d.hex() + "\n" for d in multi))
    Path(f"{out}.truth.json").write_bytes(truth)
    print(f"{len(uni)} unicast and {len(multi)} multicast datagrams recorded")


if __name__ == "__main__":
    asyncio.run(record(Path(sys.argv[1])))
