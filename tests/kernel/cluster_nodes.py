"""Lifewatch daemons as nodes of one cluster on one machine, for the kernel tests and benchmarks.

Each node is a real `lifewatch serve` subprocess (proc connector source) with its own
node_name, port, state dir and boot id file (the test-only override, so a node can "reboot"),
and a nursery: a small process whose descendants are that node's lives (`scope_pid`, the
test-only process-subtree scope). Three daemons on one kernel each see every process; the
scope makes each speak only for its own (docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import AUTH, free_port
from tests.natsd import wait_port

# Reads a command per line: "spawn ARGV..." starts a child and prints its pid.
NURSERY = """
import subprocess, sys
kids = []
for line in sys.stdin:
    argv = line.split()
    if argv and argv[0] == "spawn":
        kids.append(subprocess.Popen(argv[1:]))
        print(kids[-1].pid, flush=True)
"""


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19])


@dataclass
class Node:
    name: str
    port: int
    state: Path
    nats: list[str]
    extra: dict[str, Any]
    nursery: subprocess.Popen[str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def boot_file(self) -> Path:
        return self.state / "boot_id"

    def new_boot(self) -> str:
        boot = str(uuid.uuid4())
        self.boot_file.write_text(boot + "\n")
        return boot

    def start(self) -> None:
        if self.nursery is None:
            self.nursery = subprocess.Popen(
                [sys.executable, "-c", NURSERY], text=True, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )  # fmt: skip
        if not self.boot_file.exists():
            self.new_boot()
        cluster = {"nats": self.nats, "scope_pid": self.nursery.pid, **self.extra}
        env = dict(
            os.environ, LIFEWATCH_PORT=str(self.port), LIFEWATCH_STATE_DIR=str(self.state),
            LIFEWATCH_NODE_NAME=self.name, LIFEWATCH_BOOT_ID_FILE=str(self.boot_file),
            LIFEWATCH_CLUSTER=json.dumps(cluster), LIFEWATCH_CANARY_INTERVAL="0",
        )  # fmt: skip
        log = open(self.state / "daemon.log", "ab")  # noqa: SIM115 (the daemon's stderr)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--sources", "proc"], env=env, stderr=log
        )
        log.close()
        wait_port(self.port, self.proc, 30)

    def spawn(self, *argv: str) -> tuple[int, int]:
        """A child of this node's nursery: (pid, start ticks)."""
        assert self.nursery is not None and self.nursery.stdin and self.nursery.stdout
        self.nursery.stdin.write("spawn " + " ".join(argv) + "\n")
        self.nursery.stdin.flush()
        pid = int(self.nursery.stdout.readline())
        return pid, start_ticks(pid)

    def life(self, pid: int, ticks: int) -> str:
        return f"{self.name}/{pid}/{ticks}"

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, sig)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self.nursery is not None:
            with contextlib.suppress(ProcessLookupError):
                # the nursery's children: still running sleeps
                for line in Path(f"/proc/{self.nursery.pid}/task/{self.nursery.pid}/children")\
                        .read_text().split():  # fmt: skip
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(line), signal.SIGKILL)
            self.nursery.kill()
            self.nursery.wait()
            self.nursery = None

    # -- HTTP ------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=AUTH)
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def post(self, path: str, body: Any) -> Any:
        headers = {"Content-Type": "application/json", **AUTH}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     data=json.dumps(body).encode(), headers=headers)  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def ws_url(self, query: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream?{query}"


def make_nodes(tmp: Path, names: list[str], nats: list[str], **extra: Any) -> list[Node]:
    nodes = []
    for name in names:
        state = tmp / name
        state.mkdir(parents=True, exist_ok=True)
        nodes.append(Node(name, free_port(), state, nats, extra))
    return nodes
