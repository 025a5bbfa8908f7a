"""The command line: `lifewatch serve` and the clients (check, tail, ps, watch)."""

from app.cli.main import main

__all__ = ["main"]
