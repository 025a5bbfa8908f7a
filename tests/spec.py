"""Checks API traffic against openapi.yaml: every response a test makes is validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse

SPEC_PATH = Path(__file__).parent.parent / "openapi.yaml"
SPEC = OpenAPI.from_file_path(str(SPEC_PATH))


async def call(
    client: TestClient[Any, Any], method: str, url: str, body: bytes | None = None
) -> tuple[ClientResponse, Any]:
    """Make a request, validate request and response against the spec, return the JSON."""
    headers = {"Content-Type": "application/json"} if body else None
    resp = await client.request(method, url, data=body, headers=headers)
    raw = await resp.read()
    parts = urlsplit(url)
    args = dict(p.split("=", 1) for p in parts.query.split("&") if p)
    # The client sends the token by default (tests/helpers.py, api_client): say so here too.
    sent = {k: v for k, v in resp.request_info.headers.items() if k.lower() == "authorization"}
    req = MockRequest("http://127.0.0.1:7878", method.lower(), parts.path, args=args,
                      data=body, headers=sent)  # fmt: skip
    if resp.status < 400:  # a refused request is, by design, one the spec does not allow
        SPEC.validate_request(req)
    SPEC.validate_response(
        req, MockResponse(raw, resp.status, content_type=resp.content_type or "")
    )
    return resp, await resp.json() if raw else None
