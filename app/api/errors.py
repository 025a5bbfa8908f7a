"""Every error leaves as JSON `{error, detail}` with a 4xx code; never a traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from pydantic import ValidationError

from app.api.keys import SERVICE
from app.core.identity import LifeIdError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self, status: int, error: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.headers = headers


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def validation_detail(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, e.error, e.detail, e.headers)
    except LifeIdError as e:
        return error_response(400, "bad_life", str(e))
    except ValidationError as e:
        return error_response(400, "bad_request", validation_detail(e))
    except json.JSONDecodeError as e:
        return error_response(400, "bad_json", f"request body is not JSON: {e.msg}")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        name = (e.reason or "error").lower().replace(" ", "_")
        detail = e.text if e.text and not e.text.startswith(str(e.status)) else e.reason
        if e.status == 413:
            detail = (
                f"request body larger than {request.app[SERVICE].config.max_request_bytes} bytes"
            )
        # 405 says which methods the route has (RFC 9110 15.5.6): keep aiohttp's Allow.
        allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None
        return error_response(e.status, name, detail or "", allow)
    except ConnectionError as e:
        # The client went away mid-request: ordinary, not an error of the daemon's.
        log.info("client %s went away during %s %s: %s", request.remote, request.method,
                 request.path, e)  # fmt: skip
        return error_response(400, "client_gone", "the connection was lost")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the daemon's log")


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering what its parser refuses as JSON. Each
    connection's handler is made one of these by app/api/limits.py (no slots are added, so
    its class can be swapped); aiohttp has no setting for this answer."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        return handle_protocol_error(request, status, exc, message)


def handle_protocol_error(
    request: web.BaseRequest,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp's answer to a request its parser refused (a bad request line or header, a
    header too large), as JSON like every other error and logged without a traceback at
    INFO (a hostile or broken client, not a fault of the daemon)."""
    if status >= 500:
        log.error("error handling request from %s", request.remote, exc_info=exc)
        error, detail = "internal", "internal error; see the daemon's log"
    else:
        log.info("refused a malformed request from %s: %s", request.remote,
                 (message or str(exc or "")).splitlines()[0:1])  # fmt: skip
        error, detail = "bad_http", " ".join((message or str(exc or "")).split())[:300]
    if request.writer.output_size > 0:
        raise ConnectionError("an answer was already sent; cannot send another")
    resp = web.Response(
        status=status,
        text=json.dumps({"error": error, "detail": detail}),
        content_type="application/json",
    )
    resp.force_close()
    return resp
