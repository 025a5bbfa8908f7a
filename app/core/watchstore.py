"""Watches changed over the API, kept in the state directory: a restart does not lose them.

The file holds the API's changes only, `{name: spec}` for a watch defined or redefined and
`{name: null}` for a configured watch that was removed. At start they are applied over the
config file's watches. The default state directory is /var/lib/lifewatch, on disk: changes
last across reboots too.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from app.core.watches import WatchSpec

log = logging.getLogger(__name__)


class WatchStore:
    def __init__(self, path: Path | None, configured: Mapping[str, WatchSpec]) -> None:
        self.path = path
        self._configured = dict(configured)
        self._changes: dict[str, WatchSpec | None] = {}

    def watches(self) -> dict[str, WatchSpec]:
        """The configured watches with the API's saved changes applied."""
        out = dict(self._configured)
        self._changes = self._load()
        for name, spec in self._changes.items():
            if spec is None:
                out.pop(name, None)
            else:
                out[name] = spec
        return out

    def defined(self, name: str, spec: WatchSpec) -> None:
        if self._configured.get(name) == spec:
            self._changes.pop(name, None)  # back to what the config says
        else:
            self._changes[name] = spec
        self._save()

    def removed(self, name: str) -> None:
        if name in self._configured:
            self._changes[name] = None  # the config would bring it back
        else:
            self._changes.pop(name, None)
        self._save()

    def _load(self) -> dict[str, WatchSpec | None]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            log.error("ignoring saved watches in %s: %s", self.path, e)
            return {}
        out: dict[str, WatchSpec | None] = {}
        for name, spec in raw.items():
            try:
                out[name] = None if spec is None else WatchSpec.model_validate(spec)
            except ValidationError as e:
                log.error("ignoring saved watch %r in %s: %s", name, self.path, e)
        return out

    def _save(self) -> None:
        """Write the whole file anew and rename it over the old one: never half written.
        A failure is logged; the change still holds until the daemon stops."""
        if self.path is None:
            return
        body = {n: None if s is None else s.model_dump(exclude_none=True)
                for n, s in sorted(self._changes.items())}  # fmt: skip
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(body, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot save watches to %s: %s (kept until the daemon stops)", self.path, e)
