"""Bearer-token check for the routes that change state; reads stay open."""

from __future__ import annotations

import hmac

from aiohttp import web

from app.api.errors import ApiError
from app.api.keys import SERVICE


def require_token(request: web.Request) -> None:
    """Refuse a mutating request unless it carries `Authorization: Bearer <token>`.

    Without a configured token nothing may change: an open daemon on a shared node must
    not let any local user redefine what operators are alerted on.
    """
    token = request.app[SERVICE].config.token
    if not token:
        raise ApiError(
            403,
            "no_token_configured",
            "changes are refused because no token is configured; set `token` in the config "
            "file or LIFEWATCH_TOKEN, then send `Authorization: Bearer <token>`",
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "send `Authorization: Bearer <token>`")
    # Only HTTP's own blanks are trimmed (str.strip would take NBSP too); header bytes that
    # are not UTF-8 arrive as lone surrogates, kept as bytes for the comparison (issue 10).
    sent = given.strip(" \t").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(sent, token.encode()):
        raise ApiError(403, "forbidden", "the bearer token is not the configured one")
