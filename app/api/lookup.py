"""The JSON text of a lookup's answer (openapi.yaml `LifeAnswer`); the lookup itself, the
registry's answer checked against /proc, is app/core/lookup.py."""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring_ascii as _quote
from typing import NamedTuple

from app.api.lifejson import LifeEncoder
from app.core.identity import LifeId, life_text
from app.core.life import UNKNOWN, LifeView
from app.core.lookup import lookup
from app.core.service import Service

_compact = json.JSONEncoder(separators=(",", ":")).encode  # the API's JSON has no spaces
TEXTS = 4096  # lives whose answer text is kept: those asked about most recently


class LifeText(NamedTuple):
    """A life's JSON, with the two fields a lookup answer repeats at its top level."""

    text: str
    died_at: str
    exit: str


class Answers:
    """Lookup answers as JSON text, around each life's cached JSON: a repeated lookup of an
    unchanged life encodes nothing but the small envelope (bench/lookup_wrk.py: the hot path
    of the API)."""

    def __init__(self, service: Service, encoder: LifeEncoder, size: int = TEXTS) -> None:
        self.service = service
        self.encoder = encoder
        # Keyed by snapshot: a life that changed (died, exec'd) is encoded again.
        self._life_text = functools.lru_cache(maxsize=size)(self._encode)

    def text(self, lid: LifeId, asked: str) -> str:
        """The answer to "is `lid` alive?"; `asked` is the start as the client wrote it."""
        service = self.service
        node = service.node
        clock = node.clock
        if lid.host != node.hostname:
            reason = f"{lid.host} is another host; no cluster peer is configured"
            return _envelope(asked, UNKNOWN, reason, None)
        ticks = lid.ticks(clock)
        ans = lookup(service, lid.pid, ticks)
        life = None if ans.life is None else self._life_text(ans.life.snapshot())
        ident = life_text(lid.host, lid.pid, clock.date_of(ticks))
        return _envelope(ident, ans.state, ans.reason, life)

    def _encode(self, view: LifeView) -> LifeText:
        d = self.encoder.life_json(view)
        return LifeText(_compact(d), _compact(d["died_at"]), _compact(d["exit"]))


def _envelope(ident: str, state: str, reason: str, life: LifeText | None) -> str:
    # encode_basestring_ascii is json's own C string encoder: a third of json.dumps's time.
    head = f'{{"id":{_quote(ident)},"state":"{state}","reason":{_quote(reason)}'

    if life is None:
        return head + ',"died_at":null,"exit":null,"life":null}'
    return f'{head},"died_at":{life.died_at},"exit":{life.exit},"life":{life.text}}}'
