from __future__ import annotations

import httpx

from server.app import create_app
from server.node import RunningNode
from tracing.spans import route_template


async def test_document_describes_exactly_the_routes_served(http: httpx.AsyncClient,
                                                            node: RunningNode) -> None:
    doc = (await http.get("/api/openapi")).json()
    assert doc["openapi"].startswith("3.")
    served: dict[str, set[str]] = {}
    for rule in create_app(node.node).url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        served.setdefault(route_template(rule.rule), set()).update(methods)
    served["/ws"] = {"get"}  # the WebSocket endpoint sits in front of Quart
    documented = {path: {m for m in ops if m != "parameters"} for path, ops in doc["paths"].items()}
    assert documented == served
    put = doc["paths"]["/kv/{key}"]["put"]
    assert "any JSON value" in put["summary"] + str(put["requestBody"])


def test_route_template() -> None:
    assert route_template("/kv/<path:key>") == "/kv/{key}"
    assert route_template("/rooms/<room>") == "/rooms/{room}"
    assert route_template("/") == "/"
