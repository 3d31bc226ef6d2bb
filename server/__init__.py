"""webserver: a clustered real-time server on Trio (HTTP API, WebSocket chat, KV)."""
