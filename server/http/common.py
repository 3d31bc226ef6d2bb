"""What every HTTP module shares: the node serving the request, JSON answers, JSON bodies."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from quart import Response, current_app, request

from server.errors import InvalidInput

if TYPE_CHECKING:
    from server.node import Node


def node() -> Node:
    return current_app.config["NODE"]  # type: ignore[no-any-return]


def json_response(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status,
                    content_type="application/json")


async def read_json() -> Any:
    """The request body as JSON; the body size was capped before it was read."""
    raw = await request.get_data(as_text=False)
    if not raw:
        raise InvalidInput("the request body is empty; send JSON", field="body")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at position {exc.pos}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise InvalidInput(f"malformed JSON: {detail}", field="body") from None
