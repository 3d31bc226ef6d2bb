"""The naive baseline: a bare Quart-Trio chat app, served by Hypercorn's trio worker.

`@app.websocket("/ws")` keeps a set of connected websockets and, on each text
it receives, awaits `send` to every other member in turn with the same
`{"user","text","timestamp"}` frame as our plain protocol. No queues, no
tracing, no slow-consumer policy: one stalled member stalls the sender.

`python -m bench.naive_server [--bind 127.0.0.1:0]` prints "naive server
listening on http://HOST:PORT"; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import websocket
from quart_trio import QuartTrio

app = QuartTrio("naive")
members: set[Any] = set()


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@app.websocket("/ws")
async def chat() -> None:
    username = websocket.args.get("username", "Guest")
    await websocket.accept()
    me = cast(Any, websocket)._get_current_object()  # the object behind the proxy
    members.add(me)
    try:
        while True:
            text = await websocket.receive()
            if not isinstance(text, str):
                continue
            frame = json.dumps({"user": username, "text": text, "timestamp": timestamp()},
                               ensure_ascii=False, separators=(",", ":"))
            for other in list(members):
                if other is not me:
                    await other.send(frame)
    finally:
        members.discard(me)


async def run(sock: socket.socket) -> None:
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    host, port = sock.getsockname()[:2]
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
            print(f"naive server listening on http://{host}:{port}", flush=True)
            async for _ in signals:
                stop.set()
                break
            nursery.cancel_scope.deadline = trio.current_time() + 5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_server")
    parser.add_argument("--bind", default="127.0.0.1:0")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.WARNING)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.set_inheritable(True)
    try:
        trio.run(run, sock)
    finally:
        sock.detach()  # Hypercorn made its own socket object on this fd and closed it
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
