"""Every HTTP route on a real node (Hypercorn on loopback), and every bad input."""

from __future__ import annotations

import json

import httpx
import trio

from server.serve import RunningNode


async def test_root_says_hello_world(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert r.status_code == 200
    assert r.text == "Hello World"
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["link"] == '</chat>; rel="alternate"; type="text/html"'


async def test_nodes_lists_self_first(http: httpx.AsyncClient, node: RunningNode) -> None:
    r = await http.get("/nodes")
    assert r.status_code == 200
    assert r.json() == {"nodes": [node.node.name]}
    assert node.node.name == f"webserver@127.0.0.1:{node.url.rsplit(':', 1)[1]}"


async def test_health(http: httpx.AsyncClient, node: RunningNode) -> None:
    body = (await http.get("/health")).json()
    assert body["status"] == "ok" and body["node"] == node.node.name
    assert body["connections"] == 0


async def test_post_then_get(http: httpx.AsyncClient, node: RunningNode) -> None:
    r = await http.post("/kv", json={"key": "greeting", "value": "hi"})
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["node"] == node.node.name
    r = await http.get("/kv/greeting")
    assert r.status_code == 200
    assert r.json()["value"] == "hi" and r.json()["from_node"] == node.node.name


async def test_get_missing_key_is_404(http: httpx.AsyncClient) -> None:
    r = await http.get("/kv/nope")
    assert r.status_code == 404
    assert r.json() == {"error": "not found"}


async def test_put_accepts_any_json_value(http: httpx.AsyncClient) -> None:
    for value in ({"a": [1, 2, None]}, [1, "x"], 3.5, True, None, "s"):
        r = await http.put("/kv/any", content=json.dumps(value))
        assert r.status_code == 200, r.text
        assert (await http.get("/kv/any")).json()["value"] == value


async def test_keys_may_contain_slashes_and_unicode(http: httpx.AsyncClient) -> None:
    assert (await http.put("/kv/a/b/ключ", json=1)).status_code == 200
    assert (await http.get("/kv/a/b/ключ")).json()["value"] == 1


async def test_delete_is_a_tombstone(http: httpx.AsyncClient, node: RunningNode) -> None:
    await http.put("/kv/gone", json="x")
    r = await http.delete("/kv/gone")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert (await http.get("/kv/gone")).status_code == 404
    assert (await http.delete("/kv/gone")).status_code == 404
    entry = node.node.store.entry("gone")
    assert entry is not None and entry.deleted


async def test_unknown_path_and_method(http: httpx.AsyncClient) -> None:
    r = await http.get("/no/such/thing")
    assert r.status_code == 404 and r.json() == {"error": "not found"}
    r = await http.delete("/nodes")
    assert r.status_code == 405 and "DELETE" in r.json()["error"]


async def test_405_lists_the_allowed_methods_in_allow(http: httpx.AsyncClient) -> None:
    for method, path, allowed in [("DELETE", "/nodes", "GET, HEAD, OPTIONS"),
                                  ("POST", "/kv/k", "DELETE, GET, HEAD, OPTIONS, PUT"),
                                  ("GET", "/kv", "OPTIONS, POST")]:
        r = await http.request(method, path)
        assert r.status_code == 405, (method, path, r.text)
        assert r.headers["allow"] == allowed, (method, path)
        assert r.json() == {"error": f"method {method} not allowed here"}


async def test_rooms_routes(http: httpx.AsyncClient) -> None:
    assert (await http.get("/rooms")).json() == {"rooms": []}
    r = await http.get("/rooms/lobby")
    assert r.status_code == 404 and r.json() == {"error": "no room 'lobby'"}
    r = await http.get("/rooms/bad%20name")
    assert r.status_code == 400 and "room" in r.json()["error"]


async def test_the_default_room_exists_on_a_fresh_node(http: httpx.AsyncClient) -> None:
    # Every plain-protocol client is in `default`: it is there before anyone joined.
    r = await http.get("/rooms/default")
    assert r.status_code == 200, r.text
    assert r.json() == {"room": "default", "members": [], "history": []}


# -- bad input: right status, a message naming the problem, no state changed ----

async def _store_is_empty(node: RunningNode) -> bool:
    return len(node.node.store) == 0 and node.node.store.entry("k") is None


async def test_post_malformed_json(http: httpx.AsyncClient, node: RunningNode) -> None:
    r = await http.post("/kv", content=b'{"key": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert "malformed JSON" in r.json()["errors"]["body"][0]
    assert await _store_is_empty(node)


async def test_post_field_errors(http: httpx.AsyncClient, node: RunningNode) -> None:
    cases = [
        ({}, {"key": ["is required"], "value": ["is required"]}),
        ({"key": "", "value": "v"}, {"key": ["can't be blank"]}),
        ({"key": 5, "value": "v"}, {"key": ["must be a string"]}),
        ({"key": "k" * 257, "value": "v"}, {"key": ["must be at most 256 bytes"]}),
        ({"key": "a\nb", "value": "v"}, {"key": ["must not contain control characters"]}),
        ({"key": "k", "value": 5}, None),
    ]
    for body, expected in cases:
        r = await http.post("/kv", json=body)
        assert r.status_code == 400, (body, r.text)
        if expected is not None:
            assert r.json() == {"errors": expected}
        else:
            assert "must be a string" in r.json()["errors"]["value"][0]
    r = await http.post("/kv", json=["not", "an", "object"])
    assert r.status_code == 400 and r.json() == {"errors": {"body": ["must be a JSON object"]}}
    assert await _store_is_empty(node)


async def test_key_of_exactly_256_bytes_is_fine(http: httpx.AsyncClient) -> None:
    key = "é" * 128  # 256 bytes of UTF-8
    assert (await http.post("/kv", json={"key": key, "value": "v"})).status_code == 200
    assert (await http.post("/kv", json={"key": key + "x", "value": "v"})).status_code == 400


async def test_bad_keys_in_the_path(http: httpx.AsyncClient, node: RunningNode) -> None:
    for path in ("/kv/a%00b", "/kv/a%1Fb", "/kv/" + "k" * 257):
        for method in ("GET", "PUT", "DELETE"):
            r = await http.request(method, path, json=1 if method == "PUT" else None)
            assert r.status_code == 400, (method, path, r.text)
            assert r.json()["error"].startswith("key: ")
    assert await _store_is_empty(node)


async def test_put_malformed_and_empty_body(http: httpx.AsyncClient, node: RunningNode) -> None:
    r = await http.put("/kv/k", content=b"{nope")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    r = await http.put("/kv/k", content=b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = await http.put("/kv/k", content=b"\xff\xfe")
    assert r.status_code == 400
    assert await _store_is_empty(node)


async def test_values_over_64_kib_are_refused(http: httpx.AsyncClient, node: RunningNode) -> None:
    limit = node.node.settings.max_value_bytes
    just_over = "x" * (limit - 1)  # plus two quotes: limit + 1 bytes encoded
    r = await http.put("/kv/k", json=just_over)
    assert r.status_code == 413 and "65536" in r.json()["error"]
    r = await http.post("/kv", json={"key": "k", "value": just_over})
    assert r.status_code == 413 and "65536" in r.json()["errors"]["value"][0]
    ok = "x" * (limit - 2)
    assert (await http.put("/kv/fits", json=ok)).status_code == 200
    assert node.node.store.entry("k") is None


async def _raw_request(node: RunningNode, head: bytes, body_part: bytes) -> bytes:
    """Send a request head and only part of its body, then read the answer: a
    server that parsed (or waited for) the whole body would never answer."""
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head + body_part)
        data = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    return data


async def test_body_is_capped_before_parsing(node: RunningNode) -> None:
    head = (b"PUT /kv/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n")
    answer = await _raw_request(node, head, b'"' + b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"70000" in answer
    # No Content-Length: the cap must hold while the body streams in too.
    chunk = b"x" * 30000
    head = b"PUT /kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3))
    answer = await _raw_request(node, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert node.node.store.entry("k") is None
