"""The JSON text of a lookup's answer (openapi.yaml `LifeAnswer`); the lookup itself, the
registry's answer checked against /proc, is app/core/lookup.py."""

from __future__ import annotations

import functools
import json
from json.encoder import encode_basestring_ascii as _quote
from typing import TYPE_CHECKING, NamedTuple

from app.api.lifejson import LifeEncoder
from app.core.identity import LifeId, life_text, same_host
from app.core.life import UNKNOWN, LifeView
from app.core.lookup import lookup
from app.core.service import Service

if TYPE_CHECKING:  # not at run time: callers -> errors -> keys -> lookup
    from app.api.callers import Caller

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
        self._redacted_text = functools.lru_cache(maxsize=size)(self._encode_redacted)

    def text(self, lid: LifeId, asked: str, caller: Caller | None = None) -> str:
        """The answer to "is `lid` alive?"; `asked` is the start as the client wrote it.
        The life's argv and exe are left out for a caller who may not see them, and a life
        hidden from it (hidepid) is answered `unknown`, as the kernel would. No caller: the
        daemon itself (every detail)."""
        service = self.service
        node = service.node
        clock = node.clock
        if not same_host(lid.host, node.hostname):
            reason = f"{lid.host} is another host; no cluster peer is configured"
            return _envelope(asked, UNKNOWN, reason, None)
        ticks = lid.ticks(clock)
        ans = lookup(service, lid.pid, ticks)
        ident = life_text(lid.host, lid.pid, clock.date_of(ticks))
        found = ans.life
        if found is None:
            return _envelope(ident, ans.state, ans.reason, None)
        if caller is not None and not caller.details(found.uid):
            if not caller.shows(found.uid):
                why = f"not shown to uid {caller.uid}: /proc is mounted hidepid={caller.hidepid}"
                return _envelope(ident, UNKNOWN, why, None)
            return _envelope(ident, ans.state, ans.reason, self._redacted_text(found.snapshot()))
        return _envelope(ident, ans.state, ans.reason, self._life_text(found.snapshot()))

    def _encode(self, view: LifeView) -> LifeText:
        d = self.encoder.life_json(view)
        return LifeText(_compact(d), _compact(d["died_at"]), _compact(d["exit"]))

    def _encode_redacted(self, view: LifeView) -> LifeText:
        d = self.encoder.life_json(view, redacted=True)
        return LifeText(_compact(d), _compact(d["died_at"]), _compact(d["exit"]))


def _envelope(ident: str, state: str, reason: str, life: LifeText | None) -> str:
    # encode_basestring_ascii is json's own C string encoder: a third of json.dumps's time.
    head = f'{{"id":{_quote(ident)},"state":"{state}","reason":{_quote(reason)}'

    if life is None:
        return head + ',"died_at":null,"exit":null,"life":null}'
    return f'{head},"died_at":{life.died_at},"exit":{life.exit},"life":{life.text}}}'
