"""A workload run as a separate process (never the daemon: design.md fact 3), printing the
ground truth of what it did as JSON: each child's pid, parent, start ticks read from the
zombie before reaping, argv and exit status; and the tids of its threads.

    python tests/kernel/audit_helper.py [--linger SECONDS]

`--linger` keeps each child a zombie that long before reaping it, so a reader that captures
starts from /proc finds it there (exact ticks); without it children are reaped at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time


def start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return int(data[data.rfind(b")") + 2 :].split()[19])


class Workload:
    def __init__(self, linger: float) -> None:
        self.linger = linger
        self.lives: list[dict[str, object]] = []
        self.threads: list[int] = []

    def reap(self, pid: int, kind: str, argv: list[str] | None, exe: str | None) -> None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # a zombie: stat still readable
        ticks = start_ticks(pid)
        time.sleep(self.linger)
        _, status = os.waitpid(pid, 0)
        self.lives.append(
            {"kind": kind, "pid": pid, "ppid": os.getpid(), "start_ticks": ticks,
             "argv": argv, "exe": exe, "code": os.waitstatus_to_exitcode(status)}
        )  # fmt: skip

    def fork_exit(self, code: int, kind: str) -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(code)
        self.reap(pid, kind, None, None)

    def fork_exec(self, argv: list[str], kind: str) -> None:
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.execv(argv[0], argv)
        self.reap(pid, kind, argv, os.path.realpath(argv[0]))

    def spawn(self, argv: list[str], kind: str, shell: bool = False) -> int:
        # subprocess uses vfork (or posix_spawn) for this: the child execs at once.
        p = subprocess.Popen(argv[-1] if shell else argv, shell=shell, stdout=subprocess.DEVNULL)
        exe = "/bin/sh" if shell else argv[0]
        self.reap(p.pid, kind, ["/bin/sh", "-c", argv[-1]] if shell else argv,
                  os.path.realpath(exe))  # fmt: skip
        p.returncode = 0  # reaped above
        return p.pid

    def thread(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self.threads.append(threading.get_native_id())
            ready.set()
            time.sleep(0.05)

        t = threading.Thread(target=run)
        t.start()
        ready.wait()
        t.join()

    def run(self) -> None:
        self.fork_exit(0, "fork+exit")
        self.fork_exec(["/bin/echo", "fork exec", 'q"uote', ""], "fork+exec")
        self.spawn(["/bin/true", "vfork arg"], "vfork+exec")
        self.spawn(["sh", "-c", "/bin/echo hi | /bin/cat"], "pipeline", shell=True)
        self.thread()
        self.fork_exit(7, "exit7")
        self.fork_exec(["/bin/true", "x" * 9000], "long-arg")


def main() -> None:
    linger = float(sys.argv[sys.argv.index("--linger") + 1]) if "--linger" in sys.argv else 0.0
    w = Workload(linger)
    w.run()
    json.dump({"helper": os.getpid(), "lives": w.lives, "threads": w.threads}, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
