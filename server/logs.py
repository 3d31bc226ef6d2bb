"""Logging set-up shared by both entry points (CLI and the Hypercorn ASGI app).

Every record carries `trace_id`, `span_id`, `node` and `service`
(tracing/log_correlation.py); `[logs] format` in the telemetry config chooses
text or JSON lines on stderr. The OTLP log export (`[logs] otlp_export`) is
attached with the node's tracing (tracing.setup.configure_tracing), which knows
the node's name and resource.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

from tracing.log_correlation import (
    OtlpLogHandler,
    install_record_factory,
    make_stream_handler,
    set_log_identity,
)


def setup_logging(level: str, *, telemetry_config: str | Path | None = None, node: str = "",
                  log_format: str | None = None, stream: TextIO | None = None) -> logging.Handler | None:
    """Configure the root logger: level, correlation fields, format.

    telemetry_config: the tracing file, read for `[logs] format` and the service
    name (already validated by the caller, or raising ConfigError here).
    node: the node name when known; `set_log_identity(node=...)` (configure_tracing
    does it) fills it in once the node has bound its port.
    log_format: "text" or "json", instead of the file's.
    stream: where lines go (stderr by default).

    As logging.basicConfig, it adds no handler when the root logger already has
    one it did not add (a host's own logging set-up); calling it again replaces
    the handler it added. Returns that handler.
    """
    service = None
    fmt = log_format
    if telemetry_config is not None:
        from tracing.setup import load_tracing_config

        cfg = load_tracing_config(telemetry_config)
        service = cfg.service_name
        fmt = fmt or cfg.logs.format
    set_log_identity(service=service, node=node or None)
    install_record_factory()
    root = logging.getLogger()
    root.setLevel(level.upper())
    for old in [h for h in root.handlers if getattr(h, "_webserver_handler", False)]:
        root.removeHandler(old)
    if stream is None and any(not isinstance(h, OtlpLogHandler) for h in root.handlers):
        return None
    handler = make_stream_handler(fmt or "text", stream)
    handler._webserver_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    hypercorn = logging.getLogger("hypercorn.error")
    for old_filter in [f for f in hypercorn.filters if isinstance(f, _DropDuplicateHandlers)]:
        hypercorn.removeFilter(old_filter)
    hypercorn.addFilter(_DropDuplicateHandlers(handler))
    return handler


class _DropDuplicateHandlers(logging.Filter):
    """Hypercorn's CLI gives `hypercorn.error` a stderr handler of its own (when it
    first logs, after the app is loaded) and lets records propagate to the root, so
    every line ("Running on ...") would be written twice, once without our format.
    Run as a logger filter, before any handler: a plain stream handler on that logger
    writing where ours does is removed, and the record goes through ours alone. A
    handler elsewhere (`--error-logfile FILE`) is left alone."""

    def __init__(self, ours: logging.Handler) -> None:
        super().__init__()
        self.ours = ours

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        stream = getattr(self.ours, "stream", None)
        if logger.handlers and logger.propagate and self.ours in logging.getLogger().handlers:
            for h in list(logger.handlers):
                if type(h) is logging.StreamHandler and h.stream is stream:
                    logger.removeHandler(h)
        return True
