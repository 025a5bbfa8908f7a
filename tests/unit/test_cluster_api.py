"""The cluster's routes on a single node (no [cluster] settings): nothing changes, and asking
for the cluster gets a clear answer rather than a silent one."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from app.core.service import Service

Client = TestClient[Any, Any]


async def test_single_node_nodes_and_other_hosts(client: Client, service: Service) -> None:
    got = await (await client.get("/v1/nodes")).json()
    assert got == {"node": service.node.hostname, "boot_id": service.node.boot_id,
                   "cluster": False, "peers": []}  # fmt: skip
    other = await (await client.get("/v1/lives/elsewhere/42/100")).json()
    assert other["state"] == "unknown" and "no cluster peer" in other["reason"]
    me = service.node.hostname
    own = await (await client.get(f"/v1/lives/{me}/1/1")).json()
    assert own["state"] in ("alive", "unknown") and own["id"].startswith(f"{me}/1/")
    bad = await client.get("/v1/lives/elsewhere/x/100")
    assert bad.status == 400 and (await bad.json())["error"] == "bad_life"


async def test_scope_cluster_without_a_cluster_is_a_clear_400(client: Client) -> None:
    r = await client.get("/v1/stream?scope=cluster")
    assert r.status == 400 and (await r.json())["error"] == "no_cluster"
    r = await client.get("/v1/stream?host=elsewhere")
    assert r.status == 400 and "scope=cluster" in (await r.json())["detail"]
    r = await client.get("/v1/stream?scope=planet")
    assert r.status == 400


async def test_following_another_host_without_a_cluster_is_404(client: Client) -> None:
    r = await client.post("/v1/follow", json={"life": "elsewhere/42/100"})
    assert r.status == 404


def test_check_config_writes_the_cluster_as_a_table_that_reads_back() -> None:
    import tomllib

    from app.cli.settings import effective
    from app.core.config import Config
    from tests.helpers import make_config

    cfg = make_config(node_name="db1.x", cluster={"nats": ["nats://a:4222"], "replicas": 3,
                                                  "token": "s3cret"})  # fmt: skip
    text = effective(cfg)
    assert "s3cret" not in text and "\n[cluster]\n" in text
    back = Config.model_validate(tomllib.loads(text))
    assert back.cluster is not None and back.cluster.nats == ("nats://a:4222",)
    assert back.cluster.replicas == 3 and back.node_name == "db1.x"
