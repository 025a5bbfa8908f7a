"""The cluster over HTTP: `/v1/nodes`, lookups of any node's lives, and the glue that gives the
cluster layer (app/cluster/) what it needs from the API: answers and follows as JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.api.errors import ApiError
from app.api.follow import follow_json
from app.api.jsontext import dumps
from app.api.keys import ANSWERS, CLUSTER, ENCODER, SERVICE
from app.api.metrics import METRICS
from app.cluster.node import Cluster
from app.cluster.peers import PEER_STATES
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
    app[CLUSTER] = cluster = Cluster(service, settings, enc, answer, follow, api)
    app.cleanup_ctx.append(_run_cluster)
    app[METRICS].registry.register(ClusterCollector(cluster))


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


STORE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ClusterCollector(Collector):
    """The cluster's metrics, read at scrape time: peers by state, the outbox, publish
    latency (a death queued -> stored, from the recent ones), counters."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._seen = 0  # store latencies observed so far (a cumulative histogram)
        self._counts = [0] * (len(STORE_BUCKETS) + 1)
        self._sum = 0.0

    def collect(self) -> Any:
        c = self.cluster
        peers = GaugeMetricFamily("lifewatch_cluster_peers", "peers by state", labels=["state"])
        counts = c.peers.counts()
        for state in PEER_STATES:
            peers.add_metric([state], counts[state])
        yield peers
        pub = c.publisher
        if pub is None:
            return
        yield GaugeMetricFamily(
            "lifewatch_cluster_outbox", "deaths not yet stored", value=len(pub.outbox)
        )
        yield GaugeMetricFamily(
            "lifewatch_cluster_outbox_oldest_seconds",
            "age of the oldest death not yet stored",
            value=pub.oldest_age(),
        )
        sent = CounterMetricFamily(
            "lifewatch_cluster_published", "publish counters", labels=["what"]
        )
        for name in (
            "deaths",
            "births",
            "stored",
            "duplicates",
            "retries",
            "outbox_dropped",
            "not_sent",
            "journal_gaps",
            "errors",
        ):
            sent.add_metric([name], getattr(pub.stats, name))
        yield sent
        got = CounterMetricFamily("lifewatch_cluster_received", "receive counters", labels=["what"])
        for name, n in c.view.counters.items():
            got.add_metric([name], n)
        yield got
        yield self._store_histogram()

    def _store_histogram(self) -> HistogramMetricFamily:
        pub = self.cluster.publisher
        assert pub is not None
        recent = list(pub.stats.store_latency)
        new = pub.stats.stored - self._seen
        for sec in recent[-new:] if new > 0 else ():
            i = next((k for k, b in enumerate(STORE_BUCKETS) if sec <= b), len(STORE_BUCKETS))
            self._counts[i] += 1
            self._sum += sec
        self._seen = pub.stats.stored
        h = HistogramMetricFamily(
            "lifewatch_cluster_store_latency_seconds",
            "a death queued for NATS -> acknowledged by the stream",
        )
        cum, buckets = 0, []
        for b, n in zip((*map(str, STORE_BUCKETS), "+Inf"), self._counts, strict=True):
            cum += n
            buckets.append((b, cum))
        h.add_metric([], buckets, self._sum)
        return h
