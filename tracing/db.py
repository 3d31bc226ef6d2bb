"""CLIENT spans for calls to a database engine, after the OpenTelemetry database
semantic conventions (stable names): `db.system.name`, `db.operation.name`,
`db.namespace`, `server.address`, `server.port`, `db.operation.batch.size`,
and on failure `error.type` and `db.response.status_code`.

The span is named after the operation (`GET`, `SET`, `PIPELINE`...); keys and
values never go into attributes (they are user data), so there is no
`db.query.text`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

DB_SYSTEM_NAME = "db.system.name"
DB_OPERATION_NAME = "db.operation.name"
DB_NAMESPACE = "db.namespace"
DB_BATCH_SIZE = "db.operation.batch.size"
DB_RESPONSE_STATUS_CODE = "db.response.status_code"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"


@dataclass(frozen=True)
class DbTarget:
    """Where calls go: the same attributes on every span."""

    system: str  # "valkey" or "redis"
    address: str
    port: int
    namespace: str | None = None  # the database index, for a standalone server


@contextmanager
def db_client_span(tracer: trace.Tracer, target: DbTarget, operation: str, *,
                   batch_size: int | None = None) -> Iterator[trace.Span]:
    """A CLIENT span around one call (current while it runs). An exception marks it
    ERROR with `error.type` (and the server's error prefix, e.g. `OOM`, when the
    exception carries one in `status_code`) and propagates."""
    attributes: dict[str, str | int] = {DB_SYSTEM_NAME: target.system, DB_OPERATION_NAME: operation,
                                        SERVER_ADDRESS: target.address, SERVER_PORT: target.port}
    if target.namespace is not None:
        attributes[DB_NAMESPACE] = target.namespace
    if batch_size is not None:
        attributes[DB_BATCH_SIZE] = batch_size
    with tracer.start_as_current_span(operation, kind=SpanKind.CLIENT, attributes=attributes,
                                      record_exception=False, set_status_on_exception=False) as span:
        try:
            yield span
        except Exception as exc:
            span.set_attribute(ERROR_TYPE, getattr(exc, "error_type", None) or type(exc).__name__)
            code = getattr(exc, "status_code", None)
            if isinstance(code, str) and code:
                span.set_attribute(DB_RESPONSE_STATUS_CODE, code)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise
