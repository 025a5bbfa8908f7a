"""Typed application state shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from app.core.service import Service

SERVICE = web.AppKey("service", Service)
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
