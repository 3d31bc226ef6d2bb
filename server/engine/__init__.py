"""Where a node's shared state lives: the `base.Engine` protocol, `choose.make_engine`,
and the engines `memory`, `mesh` and `valkey` (subpackage); `valkey_process` starts a
local Valkey server (make cluster ENGINE=valkey, tests, benchmarks)."""
