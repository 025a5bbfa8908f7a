"""The compiled module (app/netlink/_batch.c) when it was built, and whether it is used:
without a C compiler or Python's headers the package installs without it, and
LIFEWATCH_NATIVE=0 switches it off (read when a reader or the parser chooses its path)."""

from __future__ import annotations

import os

try:
    from app.netlink import _batch as _batch
except ImportError:  # not built where the package was installed
    _batch = None  # type: ignore[assignment]


def native_enabled() -> bool:
    return _batch is not None and os.environ.get("LIFEWATCH_NATIVE", "1") != "0"
