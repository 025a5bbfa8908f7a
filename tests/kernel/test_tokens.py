"""Tokens never pass through argv (issue 10, Must show): the token-in-argv scenario replayed.

Before: root ran the README's `curl -XPOST -H "Authorization: Bearer $TOKEN" …/v1/resync`;
lifewatch recorded curl's argv, and any local user read the token back from
`/v1/lives?state=dead&comm=curl`. Now the daemon generates its tokens into root-only files,
and the README's commands (the CLI over the Unix socket, the CLI over TCP with
LIFEWATCH_TOKEN, curl reading its header from a file descriptor) are run for real against a
`lifewatch serve` with the proc source: the tokens are nowhere in lifewatch's history, while
the commands themselves are (so the search looked where the token would have been).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.cli.http import fetch
from tests.helpers import free_port

UNIX = "http://unix:{}:"
pytestmark = pytest.mark.root_test_side("root's own commands are replayed (root on the socket)")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, int]]:
    port = free_port()
    sock = tmp_path / "lw.sock"
    env = dict(os.environ, LIFEWATCH_STATE_DIR=str(tmp_path), LIFEWATCH_SOCKET=str(sock),
               LIFEWATCH_PORT=str(port), LIFEWATCH_CANARY_INTERVAL="0")  # fmt: skip
    env.pop("LIFEWATCH_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--sources", "proc"],
                            env=env, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "lifewatch serve did not listen"
            time.sleep(0.05)
        yield proc, sock, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def no_token() -> dict[str, str]:
    """The environment as root has it: no LIFEWATCH_TOKEN (tests/conftest.py sets one)."""
    return {k: v for k, v in os.environ.items() if k != "LIFEWATCH_TOKEN"}


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    out = subprocess.run([sys.executable, "-m", "app", *args], env=env or no_token(),
                         capture_output=True, check=True, timeout=20)  # fmt: skip
    return json.loads(out.stdout)


def history(sock: Path) -> str:
    """Everything lifewatch holds, as root sees it: every life and every journaled event."""
    base = UNIX.format(sock)
    lives: list[Any] = []
    after = ""
    while True:
        page = fetch(f"{base}/v1/lives?limit=10000{after}")
        lives += page["lives"]
        if page["next"] is None:
            break
        after = f"&after={page['next']}"
    events: list[Any] = []
    cursor = 0
    while True:
        page = fetch(f"{base}/v1/events?after={cursor}&limit=10000")
        events += page["events"]
        if page["next"] == cursor:
            break
        cursor = page["next"]
    return json.dumps(lives, separators=(",", ":")) + json.dumps(events, separators=(",", ":"))


def test_the_token_is_nowhere_in_lifewatchs_history(
    daemon: tuple[subprocess.Popen[bytes], Path, int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIFEWATCH_TOKEN")  # root on the socket, as in the README
    proc, sock, port = daemon
    admin, read = (tmp_path / "token").read_text().strip(), (tmp_path / "read-token")
    read_token = read.read_text().strip()
    for f in (tmp_path / "token", read):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600 and f.stat().st_uid == 0
    assert len(admin) >= 32 and admin != read_token

    # The README's commands. Root on the Unix socket needs no token at all.
    assert cli("whoami", "--url", UNIX.format(sock))["scopes"] == ["read", "admin"]
    resync = subprocess.run([sys.executable, "-m", "app", "resync", "--url", UNIX.format(sock)],
                            capture_output=True, timeout=20, env=no_token())  # fmt: skip
    assert resync.returncode == 0 or b"too_soon" in resync.stderr
    # Over TCP, the token comes from the environment (or the token file), never argv.
    env = dict(no_token(), LIFEWATCH_TOKEN=admin)
    who = cli("whoami", "--url", f"http://127.0.0.1:{port}", env=env)
    assert (who["via"], who["token"]) == ("tcp", "admin")
    # curl reads its header from a descriptor (bash's printf is a builtin: no exec).
    curl = subprocess.run(
        ["bash", "-c", 'curl -s -H @<(printf "Authorization: Bearer %s" "$LIFEWATCH_TOKEN") '
         f'http://127.0.0.1:{port}/v1/whoami'],
        env=env, capture_output=True, check=True, timeout=20,
    )  # fmt: skip
    assert json.loads(curl.stdout)["token"] == "admin"
    # Without a token TCP answers nothing but /healthz.
    bare = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           f"http://127.0.0.1:{port}/v1/lives"], capture_output=True)  # fmt: skip
    assert bare.stdout == b"401"

    # The old way, with a decoy: a secret on curl's command line is in the history.
    decoy = f"decoy-{os.urandom(8).hex()}"
    subprocess.run(["curl", "-s", "-H", f"Authorization: Bearer {decoy}",
                    f"http://127.0.0.1:{port}/healthz"], capture_output=True)  # fmt: skip

    time.sleep(0.3)  # the last commands' deaths reach the journal
    seen = history(sock)
    # The search looked where the token would be: the commands' own lives are recorded...
    assert '"comm":"curl"' in seen and "/dev/fd/" in seen and '"whoami"' in seen
    assert decoy in seen
    # ...and neither token is anywhere in them.
    assert admin not in seen and read_token not in seen

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    # The dashboard's login URL was printed at start, the token in its fragment.
    assert f"/#token={read_token}" in err.decode()
    assert not sock.exists()  # the socket is removed on stop
