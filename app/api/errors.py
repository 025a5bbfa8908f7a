"""Every error leaves as JSON `{error, detail}` with a 4xx code; never a traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
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
        return error_response(e.status, name, detail or "")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the daemon's log")
