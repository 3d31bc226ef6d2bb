"""webserver: a clustered real-time server on Trio (HTTP API, WebSocket chat, KV).

Entry points: `python -m server` (`__main__`: one node, or `--cluster N` local
nodes), `server.asgi:app` (the Hypercorn CLI), `server.serve.serve_node` (a node
inside your own `trio.run`). Settings: `server.settings.load_settings`. Errors a
caller may see: `server.errors`. Subpackages: http (front ends), chat, kv,
engine (where shared state lives), cluster (the mesh).
"""
