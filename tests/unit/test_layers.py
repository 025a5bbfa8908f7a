"""The layers hold: imports only go down (netlink/procfs <- sources <- core <- api <- cli), and
nothing below app/api speaks HTTP or JSON. The contracts are import-linter's, in pyproject.toml;
`make test` runs `lint-imports` too, this test makes `pytest` alone say so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:]
    declared = (ROOT / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert f"Contracts: {declared} kept, 0 broken." in out.stdout
