"""What the fake Files and Batch APIs (``files.py``, ``batches.py``) share over HTTP: errors raised
as ``ApiError`` and answered in OpenAI's shape, the API-key check, query parameters, cursor pages.

A list is a cursor page as OpenAI's: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``,
newest first unless asked otherwise; ``after`` is the id of the last object of the previous page, and
the page holds the objects created before it (``order=asc``: after it).  An ``after`` naming an
object deleted since still works (every id ever issued keeps its creation number); one never issued
is a 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from aiohttp import web

from .api import error_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered as OpenAI's error body with ``status``; ``param`` and ``code`` as OpenAI fills them."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> web.Response:
        body = error_body(self.message, "invalid_request_error", self.param, self.code)
        return web.Response(body=body, status=self.status, content_type="application/json")


def not_found(kind: str, object_id: str, param: str = "id") -> ApiError:
    return ApiError(404, f"No such {kind} object: {object_id}", param)


def missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, f"Invalid value for '{param}': {message}", param, "invalid_value")


def guarded(handler: Handler, api_key: Callable[[], str | None], enabled: Callable[[], bool] | None = None) -> Handler:
    """``handler`` behind the key check (401 as the completion endpoints answer it), ApiError answered.
    While ``enabled()`` is false the route is absent: 404, as a server without it (llama.cpp's) answers."""

    async def guarded_handler(request: web.Request) -> web.StreamResponse:
        if enabled is not None and not enabled():
            return web.json_response({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
                                     status=404)
        key = api_key()
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return ApiError(401, "Incorrect API key provided.", None, "invalid_api_key").response()
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()

    return guarded_handler


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"'{raw}' is not an integer.") from None
    if not lo <= value <= hi:
        raise invalid(name, f"must be an integer in [{lo}, {hi}].")
    return value


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


class Listed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def seq(self) -> int: ...


T = TypeVar("T", bound=Listed)


def page(
    items: Sequence[T], issued: dict[str, int], after: str | None, limit: int, newest_first: bool = True
) -> tuple[list[T], bool]:
    """One page of ``items`` (in creation order) and whether more follow; see the module docstring."""
    ordered = list(reversed(items)) if newest_first else list(items)
    if after is not None:
        if after not in issued:
            raise invalid("after", f"no object has the id '{after}'.")
        cursor = issued[after]
        ordered = [i for i in ordered if (i.seq < cursor if newest_first else i.seq > cursor)]
    return ordered[:limit], len(ordered) > limit


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
