"""What every route of the control API shares: the JSON error shape, schema errors named by
field, the ``limit`` query parameter and reading a JSON body within the size limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from orchestrator.model import load_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The largest JSON body a route reads (imports stream, and have no such limit).
MAX_BODY = 1 << 20


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The API's error answer: ``{"error": {"code", "message", ...}}``."""
    body = {"code": code, "message": message, **extra}
    return web.json_response({"error": body}, status=status)


#: The codes of the answers aiohttp raises itself (routing, body size); others are named
#: after their reason (``Bad Request``: ``BAD_REQUEST``).
HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "TOO_LARGE"}


def http_error(exc: web.HTTPException) -> web.Response:
    """``exc`` (an error aiohttp raised, e.g. 404 for an unknown path, 405 for a wrong method)
    in the API's error shape; a 405 keeps its ``Allow`` header and lists the methods."""
    code = HTTP_CODES.get(exc.status) or exc.reason.upper().replace(" ", "_").replace("-", "_")
    extra: dict[str, Any] = {}
    message = exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        extra["allowed"] = sorted(exc.allowed_methods)
        message = f"{exc.method} is not allowed here; allowed: {', '.join(extra['allowed'])}"
    elif exc.status == 404 and message == "Not Found":
        message = "no such route"
    answer = error(exc.status, code, message, **extra)
    if "Allow" in exc.headers:
        answer.headers["Allow"] = exc.headers["Allow"]
    return answer


def utf8(text: str) -> bool:
    """False for a header value that was not UTF-8 (aiohttp keeps such bytes as surrogates)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def invalid(exc: ValidationError, most: int = 10) -> web.Response:
    """400 INVALID_REQUEST naming each field the schema refused (``body`` for the whole)."""
    fields: list[str] = []
    problems: list[str] = []
    for problem in exc.errors()[:most]:
        where = ".".join(str(part) for part in problem["loc"])[:100] or "body"
        fields.append(where)
        problems.append(f"{where}: {problem['msg']}")
    return error(400, "INVALID_REQUEST", "; ".join(problems), fields=fields)


def parse_limit(query: Mapping[str, str], default: int, top: int = 1000) -> int | web.Response:
    """The ``limit`` query parameter (1 to ``top``), or the 400 answer."""
    try:
        value = int(query.get("limit", str(default)))
    except ValueError:
        return error(400, "INVALID_REQUEST", "limit must be a number", fields=["limit"])
    if not 1 <= value <= top:
        return error(400, "INVALID_REQUEST", f"limit must be between 1 and {top}", fields=["limit"])
    return value


async def read_json(request: web.Request) -> Any:
    """The body as JSON, or the 4xx answer."""
    try:
        return load_json(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return error(413, "TOO_LARGE", f"the body exceeds {MAX_BODY} bytes")
    except ValueError as exc:
        return error(400, "MALFORMED_JSON", f"the body is not JSON ({exc})"[:300])
