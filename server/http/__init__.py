"""The front ends: `routes` (the HTTP API blueprint), `ws` (the `/ws` endpoint, both
protocols), `ws_protocol` (the `webserver.v1` JSON protocol), `pages` (/chat,
/debug/traces), `traces_api`, `openapi`; `common` holds what they share."""
