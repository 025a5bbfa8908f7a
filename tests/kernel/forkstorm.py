"""A short fork storm with its own ground truth, in Python (no compiler needed in tests):

    python -m tests.kernel.forkstorm SECONDS OUT

Forks children for SECONDS; each calls _exit(n % 200). Before reaping a child it reads the
zombie's start ticks from /proc/<pid>/stat (a zombie keeps it; its pid cannot be reused
before the reap). Writes "pid start_ticks exit_code" per life to OUT, flushed as it goes, so
the truth survives when the storm is cut short. (bench/forker.c is the full-rate one.)
"""

from __future__ import annotations

import os
import sys
import time


def main(seconds: float, out: str) -> None:
    end = time.monotonic() + seconds
    n = 0
    with open(out, "w", buffering=1) as f:
        while time.monotonic() < end:
            n += 1
            pid = os.fork()
            if pid == 0:
                os._exit(n % 200)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie: stat still there
            with open(f"/proc/{pid}/stat", "rb") as st:
                ticks = int(st.read().rsplit(b")", 1)[1].split()[19])
            _, status = os.waitpid(pid, 0)
            f.write(f"{pid} {ticks} {os.waitstatus_to_exitcode(status)}\n")


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2])
