"""The simulator's HTTP answers in the provider's shapes: ``{"error": {"code", "message"}}``, the
deployed service's bare-string errors, and the rejection a request handler raises to send one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

__all__ = ["Rejection", "error_response", "json_object", "plain_error"]


class Rejection(Exception):
    """An error answer decided while validating a place-call request."""

    def __init__(self, response: web.Response, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def plain_error(status: int, message: str) -> web.Response:
    # The deployed code answers some errors with a bare string instead of {code, message}.
    return web.json_response({"error": message}, status=status)


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
