"""The cluster over HTTP: `/v1/nodes`, lookups of any node's lives, and the glue that gives the
cluster layer (app/cluster/) what it needs from the API: answers and follows as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from app.api.errors import ApiError
from app.api.follow import follow_json
from app.api.jsontext import dumps
from app.api.keys import ANSWERS, CLUSTER, ENCODER, SERVICE
from app.cluster.node import Cluster
from app.core.identity import LifeId, LifeIdError, parse_life_id

routes = web.RouteTableDef()


def install(app: web.Application) -> None:
    """With `[cluster]` settings, build the node's cluster side and run it after the service
    starts (and stop it before the service stops). Without them, nothing: a single node."""
    service = app[SERVICE]
    settings = service.config.cluster
    if settings is None:
        return
    answers, enc = app[ANSWERS], app[ENCODER]

    def answer(text: str) -> str:
        return answers.text(parse_life_id(text), text)

    def follow(text: str) -> tuple[int, dict[str, Any]]:
        try:
            return 200, follow_json(service, enc, parse_life_id(text))
        except ApiError as e:
            return e.status, {"error": e.error, "detail": e.detail}
        except LifeIdError as e:
            return 400, {"error": "bad_life", "detail": str(e)}

    cfg = service.config
    api = f"http://{cfg.host}:{cfg.port}"
    app[CLUSTER] = Cluster(service, settings, enc, answer, follow, api)
    app.cleanup_ctx.append(_run_cluster)


async def _run_cluster(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CLUSTER]
    await cluster.start()
    yield
    await cluster.stop()


def cluster_of(app: web.Application) -> Cluster | None:
    return app.get(CLUSTER)


async def answer_texts(app: web.Application, items: list[tuple[LifeId, str]]) -> list[str]:
    """Answers (LifeAnswer JSON text) for lives of any node, in order: this node's from its
    registry, the others' through the cluster (app/cluster/ask.py)."""
    service, answers = app[SERVICE], app[ANSWERS]
    cluster = cluster_of(app)
    me = service.node.hostname
    out: list[str] = [""] * len(items)
    remote: list[int] = []
    for i, (lid, text) in enumerate(items):
        if lid.host == me or cluster is None:
            out[i] = answers.text(lid, text)
        else:
            remote.append(i)
    if remote and cluster is not None:
        got = await cluster.asker.answers([items[i] for i in remote])
        for i, a in zip(remote, got, strict=True):
            out[i] = dumps(a).decode()
    return out


@routes.get("/v1/lives/{host}/{pid}/{start}")
async def is_alive_anywhere(request: web.Request) -> web.Response:
    info = request.match_info
    text = f"{info['host']}/{info['pid']}/{info['start']}"
    lid = parse_life_id(text)
    (out,) = await answer_texts(request.app, [(lid, text)])
    return web.Response(text=out, content_type="application/json")


@routes.get("/v1/nodes")
async def nodes(request: web.Request) -> web.Response:
    cluster = cluster_of(request.app)
    if cluster is None:
        node = request.app[SERVICE].node
        return web.json_response({"node": node.hostname, "boot_id": node.boot_id,
                                  "cluster": False, "peers": []})  # fmt: skip
    return web.json_response({"cluster": True, **cluster.nodes_json()})
