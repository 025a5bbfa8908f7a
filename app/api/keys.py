"""Typed application state shared by the route modules."""

from __future__ import annotations

from aiohttp import web

from app.api.lifejson import LifeEncoder
from app.api.lookup import Answers
from app.cluster.node import Cluster
from app.core.service import Service

SERVICE = web.AppKey("service", Service)
ENCODER = web.AppKey("encoder", LifeEncoder)  # lives and events as JSON, for every route
ANSWERS = web.AppKey("answers", Answers)  # lookup answers as JSON text
SOCKETS = web.AppKey("sockets", set[web.WebSocketResponse])
CLUSTER = web.AppKey("cluster", Cluster)  # set only with [cluster] settings
