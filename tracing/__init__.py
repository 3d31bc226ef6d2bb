"""OpenTelemetry for webserver, never importing `server`: `setup.configure_tracing`
(providers, exporters, shutdown), `spans` (the span catalogue's names and
attributes), the adapters the domains use (`http` ASGI middleware, `websocket`,
`kv_span`, `chat`, `db`), `propagation` (W3C context between nodes), `metrics`,
`log_correlation`, `sampling`, and `span_buffer` (recent spans for /debug/traces)."""
