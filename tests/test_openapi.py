from __future__ import annotations

from typing import Any

import httpx

from server.app import create_app
from server.http.openapi import openapi_document
from server.serve import RunningNode
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


def _resolve(doc: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    ref = response.get("$ref")
    if ref is None:
        return response
    assert set(response) == {"$ref"}, response  # siblings of a $ref are ignored in 3.0
    target: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target  # type: ignore[no-any-return]


def test_every_kv_operation_documents_503_and_writes_507() -> None:
    doc = openapi_document()
    kv = {("post", "/kv"), ("get", "/kv/{key}"), ("put", "/kv/{key}"), ("delete", "/kv/{key}")}
    for method, path in kv:
        responses = doc["paths"][path][method]["responses"]
        assert "503" in responses, (method, path)
        assert "quorum" in _resolve(doc, responses["503"])["description"]
        if method != "get":  # every write, a delete's tombstone too, may meet a full store
            assert "507" in responses, (method, path)
            assert "max_keys" in _resolve(doc, responses["507"])["description"]


def test_405_is_described_once_with_its_allow_header() -> None:
    doc = openapi_document()
    response = doc["components"]["responses"]["MethodNotAllowed"]
    assert "Allow" in response["headers"]
    assert response["content"]["application/json"]["schema"]["required"] == ["error"]
    assert "#/components/responses/MethodNotAllowed" in doc["info"]["description"]
    for path, ops in doc["paths"].items():  # every $ref resolves
        for method, op in ops.items():
            if method != "parameters":
                for response in op["responses"].values():
                    assert "description" in _resolve(doc, response), (path, method)


def test_rooms_is_described_as_cluster_wide() -> None:
    get = openapi_document()["paths"]["/rooms"]["get"]
    text = get["summary"] + get["description"]
    assert "this node" not in get["summary"] and "whole cluster" in text
    room = openapi_document()["paths"]["/rooms/{room}"]["get"]["responses"]
    assert "`default`" in room["404"]["description"]
