"""Fixtures for every room, and the rooms' rules: tests/kernel and tests/browser are marked
`kernel` (they drive the live kernel: audit, the proc connector, pidfds) and `browser`.

Kernel tests run for real as root. A run without root skips them with that reason, except in
CI (`CI` set), where a kernel test that cannot run is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import TestClient

from app.api.app import make_app
from app.core.service import Service
from tests.helpers import TOKEN, api_client, make_config

ROOT = Path(__file__).parent
# Daemons the tests start as processes (lifewatch serve) take their token from here, and
# so do the clients they run (the CLI, app.client): one place (issue 10). No Unix socket
# unless a test names one: runs must not meet each other's, or a system daemon's, socket.
os.environ.setdefault("LIFEWATCH_TOKEN", TOKEN)
os.environ.setdefault("LIFEWATCH_SOCKET", "")
# No test reads the host's /etc/lifewatch/lifewatch.toml (app/cli/settings.py): the daemons
# the tests start inherit this; a test of the default path removes it.
os.environ.setdefault("LIFEWATCH_CONFIG", "")
ROOMS = {"kernel": ("kernel",), "browser": ("kernel", "browser")}
NOT_ROOT_SKIPS = pytest.StashKey[int]()


# Set by scripts/test-unprivileged.sh: this pass runs as the unprivileged `lifewatch` user
# with only the systemd unit's capabilities (docs/operations.md, "Least privilege").
UNPRIVILEGED = bool(os.environ.get("LIFEWATCH_TEST_UNPRIVILEGED"))
ROOT_SIDE = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        room = Path(str(item.path)).relative_to(ROOT).parts[0]
        for mark in ROOMS.get(room, ()):
            item.add_marker(getattr(pytest.mark, mark))
    if UNPRIVILEGED and os.geteuid() != 0:
        # Tests whose own set-up needs root (never the daemon's part: that is what this pass
        # checks) are not part of this pass; they ran, as root, in the pass before it. Said
        # at the end of the run, each with its reason; not reported as skipped.
        out = [i for i in items if i.get_closest_marker("root_test_side") is not None]
        if out:
            config.hook.pytest_deselected(items=out)
            items[:] = [i for i in items if i.get_closest_marker("root_test_side") is None]
            config.stash[ROOT_SIDE] = [
                f"{i.nodeid}: {i.get_closest_marker('root_test_side').args[0]}"  # type: ignore[union-attr]
                for i in out
            ]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("kernel") is None or os.geteuid() == 0 or UNPRIVILEGED:
        return
    if os.environ.get("CI"):
        pytest.fail("kernel tests must run as root in CI (a skipped kernel test is a failure)")
    item.config.stash[NOT_ROOT_SKIPS] = item.config.stash.get(NOT_ROOT_SKIPS, 0) + 1
    pytest.skip("needs root: drives the live kernel (audit, proc connector, pidfd)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> Iterator[None]:
    """The last word of a run without root, after -ra's list and just before the counts: how
    much of the suite it did not run, and why. (The outermost wrapper: it writes last.)"""
    yield
    root_side = config.stash.get(ROOT_SIDE, [])
    if root_side:
        terminalreporter.write_sep(
            "=", f"unprivileged pass: {len(root_side)} tests left to the root pass above "
            "(their own set-up needs root; the daemon's part is what this pass checks)",
        )  # fmt: skip
        for line in root_side:
            terminalreporter.write_line(f"  {line}")
    skipped = config.stash.get(NOT_ROOT_SKIPS, 0)
    if skipped:
        terminalreporter.write_sep(
            "=",
            f"not root: {skipped} kernel/browser tests skipped (they need the live kernel: "
            "audit, proc connector, pidfd); run as root for the full suite",
            yellow=True,
            bold=True,
        )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, like `lifewatch serve`: a socket it refuses fails here too."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "30"])
    yield p
    p.kill()
    p.wait()


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    svc = Service(make_config())
    await svc.start()
    yield svc
    await svc.stop()


@pytest.fixture
async def client(service: Service) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = make_app(service, manage=False)
    async with api_client(app) as c:
        yield c
