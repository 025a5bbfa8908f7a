"""The daemon's listeners: TCP (token holders) and the Unix socket (callers named by uid),
each behind its own connection gate (app/api/limits.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from aiohttp import web

from app.api.limits import GATES, REFUSALS, Gate, GatedSite
from app.core.config import Config

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class ListenError(Exception):
    """A listener cannot be opened; the message says why, for the operator."""


def exposure_problem(config: Config, has_token: bool) -> str | None:
    """Why listening on `host` would be unsafe, or None. Beyond loopback the token travels in
    clear (lifewatch has no TLS), and without one nothing but /healthz answers anyway."""
    if config.host in LOOPBACK_HOSTS or config.host.startswith("127.") or config.insecure:
        return None
    if not has_token:
        return (f"--host {config.host} listens beyond this machine, and no token is "
                "configured or generated (state_dir); refusing. Set a token, or pass "
                "--insecure")  # fmt: skip
    return (f"--host {config.host} listens beyond this machine, and lifewatch has no TLS: "
            "tokens would cross the network in clear. Put a TLS proxy in front and listen "
            "on loopback, or pass --insecure")  # fmt: skip


def unix_listener(path: Path) -> socket.socket:
    """A Unix socket at `path` any local user may connect to (callers are told apart by
    their uid). A stale socket file is replaced; a live one (another daemon) is not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise ListenError(f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise ListenError(f"another daemon is serving on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o666)  # every local user may ask; what each sees depends on its uid
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def open_listeners(runner: web.AppRunner, app: web.Application, config: Config) -> int:
    """Start the TCP listener and, if configured, the Unix socket; returns the TCP port."""
    refusals = app[REFUSALS]
    tcp = tcp_listener(config.host, config.port)
    port = int(tcp.getsockname()[1])
    app[GATES]["tcp"] = gate = Gate("tcp", config, refusals)
    await GatedSite(runner, tcp, gate, f"http://{config.host}:{port}").start()
    if config.socket is not None:
        unix = unix_listener(config.socket)
        app[GATES]["unix"] = ugate = Gate("unix", config, refusals)
        await GatedSite(runner, unix, ugate, f"http+unix://{config.socket}").start()
    return port


def remove_socket(config: Config) -> None:
    if config.socket is not None:
        with contextlib.suppress(OSError):
            config.socket.unlink()
