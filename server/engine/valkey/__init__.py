"""The `valkey` engine (engine.py): state in Valkey/Redis through coredis (client.py);
KV (kv.py), chat over pub/sub with history lists and presence hashes (chat.py),
heartbeat membership (members.py), key and channel names (keys.py)."""
