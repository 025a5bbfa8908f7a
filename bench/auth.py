"""The credentials of benchmark daemons: TCP needs a token for everything but /healthz.

A throwaway token for a daemon the benchmark starts and stops; it is given to the daemon in
its environment (never argv). No Unix socket: runs must not meet other daemons' sockets.
"""

from __future__ import annotations

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"LIFEWATCH_TOKEN": TOKEN, "LIFEWATCH_SOCKET": ""}
