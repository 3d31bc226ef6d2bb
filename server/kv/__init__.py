"""The key-value store of the memory and mesh engines: `service.KV` (operations,
quorums, read repair, hand-off), `store` (versions, tombstones, merge; pure state),
`clock` (hybrid logical clock), `placement` (rendezvous hashing)."""
