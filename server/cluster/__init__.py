"""The mesh: `mesh.Mesh` (listen, dial, heartbeats, gossip, dispatch to handlers) over
authenticated trio-websocket links (`links`, `auth`, `handshake`); `protocol` and
`membership` are pure state; `transport` is TCP (in-memory in the simulation tests)."""
