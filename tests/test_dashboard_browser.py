"""The dashboard in a real headless browser (Debian's chromium driven by Playwright).

It loads the page, sees a process the test spawns appear and then its death in the feed,
and sees the page recover by itself after the server restarts (a new daemon run: its
cursors are all larger, so the page gets `reset` and re-reads state).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from app.api.app import make_app
from app.config import Config
from app.observations import Exec, Exit, Fork
from app.procfs import parse_stat
from app.scripted import ScriptedSource
from app.service import Service
from app.watches import WatchSpec
from tests.conftest import exec_done

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"),
    reason="browser test runs as root or in CI (chromium installed by .ci/run)",
)
SHOTS = os.environ.get("LIFEWATCH_SCREENSHOTS")
# A duration no other test on the machine uses: the watch matches only our sleeper.
SLEEP = f"{30 + os.getpid() % 10_000 / 100_000:.5f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kernel_sources() -> tuple[str, ...]:
    """The proc connector when this tree has it and we are root; else a scripted source."""
    try:
        import app.netlink.proc_source  # noqa: F401
    except ImportError:
        return ()
    return ("proc",) if os.geteuid() == 0 else ()


class Server:
    """One daemon run on a fixed port; `restart` is a new run (new cursors, new journal)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.runner: web.AppRunner | None = None
        self.script: ScriptedSource | None = None

    async def start(self) -> None:
        kernel = kernel_sources()
        cfg = Config(
            sources=kernel, state_dir=None, port=self.port, heartbeat=2.0,
            watches={"sleeper": WatchSpec(argv=f"^sleep {SLEEP}$")},
        )  # fmt: skip
        self.script = None if kernel else ScriptedSource("proc")
        service = Service(cfg, sources=None if kernel else [self.script])
        self.runner = web.AppRunner(make_app(service), shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def spawned(self, proc: subprocess.Popen[bytes]) -> None:
        """Tell a scripted run what the kernel sources would have seen."""
        if self.script is not None:
            exec_done(proc.pid)
            ticks = parse_stat(Path(f"/proc/{proc.pid}/stat").read_bytes()).start_ticks
            self.script.push(Fork("proc", proc.pid, os.getpid(), time.time(), start_ticks=ticks))
            self.script.push(Exec("proc", proc.pid, time.time()))

    def reaped(self, proc: subprocess.Popen[bytes]) -> None:
        if self.script is not None:
            rc = proc.returncode
            assert rc is not None
            code, sig = (rc, None) if rc >= 0 else (None, -rc)
            self.script.push(Exit("proc", proc.pid, time.time(), code=code, signal=sig))


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server(free_port())
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = await browser.new_page(viewport={"width": 1440, "height": 1000})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        yield pg
        await browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


async def shot(pg: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    await pg.screenshot(path=str(path), full_page=True)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)


async def watch_state(pg: Any, state: str) -> None:
    await pg.wait_for_function(
        "s => document.querySelector('#watches [data-watch=\"sleeper\"] .state')"
        "?.textContent.startsWith(s)", arg=state, timeout=10_000,
    )  # fmt: skip


async def see_a_life_and_its_death(pg: Any, server: Server) -> None:
    proc = subprocess.Popen(["sleep", SLEEP])
    try:
        server.spawned(proc)
        # It shows in the process tree (alive), as a birth in the feed, and in its watch.
        await pg.wait_for_selector(f'#tree .p[data-pid="{proc.pid}"]', timeout=10_000)
        await pg.wait_for_selector(
            f'#feed .e[data-type="born"][data-pid="{proc.pid}"]', timeout=10_000
        )
        await watch_state(pg, "running")
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait)
    server.reaped(proc)
    died = await pg.wait_for_selector(
        f'#feed .e[data-type="died"][data-pid="{proc.pid}"]', timeout=10_000
    )
    assert "SIGKILL" in await died.inner_text()
    await watch_state(pg, "not running")


async def test_dashboard_follows_lives_and_survives_a_restart(
    server: Server, page: Any, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    await page.goto(url)
    await page.wait_for_function("document.getElementById('conn').textContent === 'live'")
    assert await page.inner_text("#host") == socket.gethostname()
    await watch_state(page, "not running")
    await see_a_life_and_its_death(page, server)
    await shot(page, tmp_path, "dashboard-live")

    await server.stop()
    await page.wait_for_function(
        "document.getElementById('conn').textContent !== 'live'", timeout=10_000
    )
    await shot(page, tmp_path, "dashboard-server-down")
    await server.start()
    # The page reconnects by itself with its old cursor, gets `reset` (another run) and
    # re-reads state; then it follows the new run as before.
    await page.wait_for_selector('#feed .e[data-type="reset"]', timeout=15_000)
    await page.wait_for_function(
        "document.getElementById('conn').textContent === 'live'", timeout=15_000
    )
    await see_a_life_and_its_death(page, server)
    await shot(page, tmp_path, "dashboard-after-restart")
