"""The node as an operator runs it: `python -m server` (env, flags, config errors,
SIGTERM with clients connected) and `hypercorn -k trio server.asgi:app`."""

from __future__ import annotations

import json
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from server.ports import free_port
from tests.e2e.processes import (
    NODE_COMMAND,
    enter_on_free_port,
    hypercorn_process,
    node_process,
    process_env,
    running_process,
)

pytestmark = pytest.mark.e2e

EXIT_DEADLINE = 15.0


async def get_json(url: str, path: str) -> tuple[int, object]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get(path)
        return r.status_code, r.json()


async def test_webserver_bind_from_the_environment() -> None:
    async with AsyncExitStack() as stack:
        port, node = await enter_on_free_port(
            stack, lambda port: node_process({"WEBSERVER_BIND": f"127.0.0.1:{port}"}))
        assert node.url == f"http://127.0.0.1:{port}"
        status, body = await get_json(node.url, "/nodes")
        assert status == 200
        assert isinstance(body, dict) and len(body["nodes"]) == 1, body
        assert str(port) in body["nodes"][0], body
        assert await node.terminate(EXIT_DEADLINE) == 0, node.describe()


async def test_bind_and_node_name_flags() -> None:
    name = f"e2e-node-{uuid.uuid4().hex[:8]}"
    # The default environment also sets WEBSERVER_BIND=127.0.0.1:0: the flag wins.
    async with AsyncExitStack() as stack:
        port, node = await enter_on_free_port(
            stack, lambda port: node_process(args=["--bind", f"127.0.0.1:{port}", "--node-name", name]))
        assert node.url == f"http://127.0.0.1:{port}"
        assert node.node_name == name
        assert await get_json(node.url, "/nodes") == (200, {"nodes": [name]})
        assert await node.terminate(EXIT_DEADLINE) == 0, node.describe()


async def test_unknown_environment_variable_is_a_config_error() -> None:
    async with running_process(NODE_COMMAND, process_env({"WEBSERVER_FOO": "1"})) as proc:
        assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
        assert "WEBSERVER_FOO" in proc.stderr(), proc.describe()


async def test_unknown_key_in_config_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "webserver.toml"
    config.write_text('[server]\nbind = "127.0.0.1:0"\nno_such_setting_xyz = 1\n', encoding="utf-8")
    command = [*NODE_COMMAND, "--config", str(config)]
    async with running_process(command, process_env()) as proc:
        assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
        assert "no_such_setting_xyz" in proc.stderr(), proc.describe()


async def test_sigterm_closes_websockets_with_1001_and_exits_0() -> None:
    async with node_process() as node:
        async with open_websocket_url(f"{node.ws_url}?username=alice") as plain, \
                open_websocket_url(f"{node.ws_url}?username=bob",
                                   subprotocols=["webserver.v1"]) as jsonws:
            # A round trip first, so both are fully joined before the signal.
            await jsonws.send_message(json.dumps({"type": "ping", "ref": 1}))
            with trio.fail_after(10):
                assert json.loads(await jsonws.get_message())["type"] == "pong"
            async with trio.open_nursery() as nursery:
                exit_code: list[int] = []

                async def stop() -> None:
                    exit_code.append(await node.terminate(EXIT_DEADLINE))

                nursery.start_soon(stop)
                for ws in (plain, jsonws):
                    with trio.fail_after(EXIT_DEADLINE), pytest.raises(ConnectionClosed) as closed:
                        while True:  # skip any frame still in flight
                            await ws.get_message()
                    reason = closed.value.reason
                    assert reason is not None and reason.code == 1001, reason
        assert exit_code == [0], node.describe()


async def _self_member(url: str) -> tuple[list[str], dict[str, object]]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        body = (await http.get("/nodes", params={"detail": "1"})).json()
    return body["nodes"], body["members"][0]


async def test_hypercorn_cli_without_node_name_is_named_after_the_socket_it_serves() -> None:
    async with AsyncExitStack() as stack:
        # No WEBSERVER_NODE_NAME and no WEBSERVER_BIND: settings.bind says 127.0.0.1:4000.
        port, proc = await enter_on_free_port(stack, lambda port: hypercorn_process(port, None))
        url = f"http://127.0.0.1:{port}"
        nodes, me = await _self_member(url)
        assert nodes == [f"webserver@127.0.0.1:{port}"], proc.describe()
        assert me["http_url"] == url, me
        stderr = proc.stderr()
        assert "cannot tell which socket" not in stderr, stderr
        # Once, in our format: not again through Hypercorn's own stderr handler.
        assert stderr.count(f"Running on {url}") == 1, stderr
        assert "INFO hypercorn.error: Running on" in stderr, stderr
        await proc.terminate(EXIT_DEADLINE)


async def test_hypercorn_cli_with_two_binds_warns_and_advertises_the_first_requests_address() -> None:
    async with AsyncExitStack() as stack:
        other = free_port()
        port, proc = await enter_on_free_port(
            stack, lambda port: hypercorn_process(port, None, [f"127.0.0.1:{other}"]))
        stderr = proc.stderr()
        assert "WARNING server.asgi: cannot tell which socket Hypercorn serves" in stderr, stderr
        assert "set WEBSERVER_NODE_NAME" in stderr, stderr
        # The readiness probe was the first request, on `port`: that is the address advertised.
        nodes, me = await _self_member(f"http://127.0.0.1:{other}")
        assert me["http_url"] == f"http://127.0.0.1:{port}", me
        assert nodes == ["webserver@127.0.0.1:4000"], nodes  # named after settings.bind, as warned
        await proc.terminate(EXIT_DEADLINE)


async def test_hypercorn_cli_deployment() -> None:
    name = f"e2e-hypercorn-{uuid.uuid4().hex[:8]}"
    async with AsyncExitStack() as stack:
        port, proc = await enter_on_free_port(stack, lambda port: hypercorn_process(port, name))
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            r = await http.get("/")
            assert (r.status_code, r.text) == (200, "Hello World")
            r = await http.get("/nodes")
            assert (r.status_code, r.json()) == (200, {"nodes": [name]})

        text = f"hello from the hypercorn deployment {uuid.uuid4().hex[:8]}"
        async with open_websocket_url(f"ws://127.0.0.1:{port}/ws?username=alice") as alice, \
                open_websocket_url(f"ws://127.0.0.1:{port}/ws?username=bob") as bob:
            await alice.send_message(text)
            with trio.fail_after(10):
                got = json.loads(await bob.get_message())
            assert (got["user"], got["text"]) == ("alice", text)

        await proc.terminate(EXIT_DEADLINE)  # any exit code: Hypercorn's own
