"""OpenTelemetry wiring for webserver: configuration, span catalogue, ASGI middleware."""
