"""Chat rooms: `hub.Hub` (rooms, presence, the broadcaster task), `connection.Connection`
(one client's bounded outbox and slow-consumer policy), `rooms` (pure state), and
`cluster_chat.ClusterChat` (the mesh engine's chat bus)."""
