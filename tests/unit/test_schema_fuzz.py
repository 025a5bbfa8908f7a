"""openapi.yaml against a real `lifewatch serve`, fuzzed by schemathesis with every check
(`--checks all`: status codes, content types, response schemas, `Allow` on 405 with TRACE
and other methods a route lacks, auth ignored, negative data refused, stateful links),
authenticated with the admin token from the environment (tests/schemathesis.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TOKEN, free_port, stop

ROOT = Path(__file__).parents[2]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    env = dict(os.environ, LIFEWATCH_STATE_DIR=str(tmp_path), LIFEWATCH_PORT=str(port),
               LIFEWATCH_SOCKET=str(tmp_path / "lw.sock"), LIFEWATCH_TOKEN=TOKEN)  # fmt: skip
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--sources", ""], env=env,
                            stderr=log)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "lw.sock").exists():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "lifewatch serve did not listen"
            time.sleep(0.05)
        yield port
    finally:
        stop(proc)
        log.close()
        assert "Traceback" not in (tmp_path / "daemon.log").read_text()


def test_the_api_keeps_its_contract_under_schemathesis(daemon: int, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a test dependency (pyproject.toml [test])"
    out = subprocess.run(
        [st, "--config-file", str(ROOT / "tests" / "schemathesis.toml"), "run",
         str(ROOT / "openapi.yaml"), "--url", f"http://127.0.0.1:{daemon}", "--checks", "all",
         "--max-examples", "25", "--seed", "1", "--no-color"],
        env=dict(os.environ, LIFEWATCH_TOKEN=TOKEN), capture_output=True, text=True,
        timeout=300, cwd=tmp_path,  # its cache (.schemathesis/) stays out of the checkout
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "No issues found" in out.stdout or " passed" in out.stdout, out.stdout[-3000:]
