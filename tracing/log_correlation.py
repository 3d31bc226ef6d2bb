"""Logs that carry their trace: correlation fields, text and JSON formats, OTLP export.

Every log record gets, when it is made (a record factory, so every handler sees
them, pytest's included):

- `trace_id` / `span_id`: the current span's ids in hex (32 and 16 characters),
  `""` outside a span; `trace_sampled`: whether that span is being exported;
- `node` and `service`: the node's and the service's names (one node per
  process: `set_log_identity`, called by setup_logging and, once the node has
  its name, by configure_tracing).

The text format appends ` trace_id=... span_id=...` to lines logged inside a
span; the JSON format writes one object per line. `[logs] otlp_export = true`
also sends every record over OTLP (`OtlpLogHandler`, a BatchLogRecordProcessor
whose exporter runs on its own thread) to the traces' endpoint: gRPC, or HTTP with
OTEL_EXPORTER_OTLP_[LOGS_]PROTOCOL=http/protobuf.

Why our own handler and not the SDK's `LoggingHandler` (issue 12, opentelemetry-sdk
1.45.2, `python -m bench.log_handler`: 20k records, median of 9 interleaved runs,
µs per record on top of a do-nothing handler's 7-9 µs; two runs):

    handler                               outside span   in a span
    ours                                   17.4 / 18.9    18.4 / 21.3
    SDK LoggingHandler, as is              20.1 / 25.5    22.0 / 26.6
    SDK + a processor stripping the dupes  24.1 / 30.5    29.4 / 31.1

- As is, the SDK's handler is 3-7 µs (16-35%) slower and does not export what ours
  does: it copies every non-standard record field into the attributes, so the
  record factory's trace_id/span_id/trace_sampled (already carried natively) and
  node/service (already in the resource) would go out twice. Removing them costs
  either a processor (7-11 µs, 40-60% slower than ours, last row) or overriding
  its private `_get_attributes`.
- It is deprecated in 1.45.2 (a DeprecationWarning when built; its successor is in
  opentelemetry-instrumentation-logging, not one of our dependencies).
- Its flush() starts a thread running the provider's force_flush (30 s default)
  on every call, logging.shutdown's included; ours leaves flushing, with its bound,
  to Telemetry.shutdown. It also needs a filter to keep the exporters' own records
  (`opentelemetry.*`, `grpc.*`; `urllib3.*`, `requests.*` over HTTP) out of the queue,
  which ours does itself.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import context as otel_context
from opentelemetry import trace

from tracing.config_tables import checked_table, flag
from tracing.errors import TelemetryConfigError
from tracing.sdk_compat import Logger, LoggerProvider, SeverityNumber

FORMATS = ("text", "json")
LOGS_KEYS = ("format", "otlp_export")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CORRELATION_FIELDS = ("trace_id", "span_id", "trace_sampled", "node", "service")


@dataclass(frozen=True)
class LogsConfig:
    """`[logs]` of conf/opentelemetry.toml (OTEL_LOGS_EXPORTER=otlp|none overrides otlp_export)."""

    format: str = "text"
    otlp_export: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_logs_table(table: Any, where: str = "") -> LogsConfig:
    prefix = f"{where}: " if where else ""
    table = checked_table(table, "logs", LOGS_KEYS, prefix)
    fmt = table.get("format", "text")
    if fmt not in FORMATS:
        raise TelemetryConfigError(f"{prefix}logs.format must be \"text\" or \"json\" (got {fmt!r})")
    return LogsConfig(format=fmt, otlp_export=flag(table, "logs", "otlp_export", False, prefix))


# -- correlation fields ------------------------------------------------------------

class _Identity:
    service = "webserver"
    node = ""


def set_log_identity(*, service: str | None = None, node: str | None = None) -> None:
    """The service and node names records carry (node: once it is known, e.g. after bind)."""
    if service is not None:
        _Identity.service = service
    if node is not None:
        _Identity.node = node


def log_identity() -> tuple[str, str]:
    return _Identity.service, _Identity.node


def add_correlation(record: logging.LogRecord) -> logging.LogRecord:
    """Set the correlation fields on a record from the current span context."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        record.trace_id = format(ctx.trace_id, "032x")
        record.span_id = format(ctx.span_id, "016x")
        record.trace_sampled = ctx.trace_flags.sampled
    else:
        record.trace_id = record.span_id = ""
        record.trace_sampled = False
    record.node = _Identity.node
    record.service = _Identity.service
    return record


_installed: list[Callable[..., logging.LogRecord]] = []


def install_record_factory() -> None:
    """Make every log record carry the correlation fields (idempotent)."""
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return add_correlation(previous(*args, **kwargs))

    _installed.append(previous)
    logging.setLogRecordFactory(factory)


def uninstall_record_factory() -> None:
    if _installed:
        logging.setLogRecordFactory(_installed.pop())


class CorrelationFilter(logging.Filter):
    """For a handler that may get records made before the factory was installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            add_correlation(record)
        return True


# -- formats -----------------------------------------------------------------------

class TextFormatter(logging.Formatter):
    """The plain format, with ` trace_id=... span_id=...` on lines logged inside a span."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            line += f" trace_id={trace_id} span_id={getattr(record, 'span_id', '')}"
        return line


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName", *CORRELATION_FIELDS}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message,
    node, service, trace_id/span_id/trace_sampled inside a span, exception and
    stack when present, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": getattr(record, "node", _Identity.node),
            "service": getattr(record, "service", _Identity.service),
        }
        if trace_id := getattr(record, "trace_id", ""):
            out["trace_id"] = trace_id
            out["span_id"] = getattr(record, "span_id", "")
            out["trace_sampled"] = bool(getattr(record, "trace_sampled", False))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        return json.dumps(out, default=str)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt not in FORMATS:
        raise TelemetryConfigError(f"logs.format must be \"text\" or \"json\" (got {fmt!r})")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def make_stream_handler(fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler.addFilter(CorrelationFilter())
    return handler


# -- OTLP export -------------------------------------------------------------------

# Records from the exporters themselves never go out through them (a collector
# that is down would otherwise feed its own warnings back into the queue, and at
# debug level every OTLP/HTTP post would log a line of urllib3's to export next).
_NOT_EXPORTED = ("opentelemetry", "grpc", "urllib3", "requests")
_SKIPPED_ATTRIBUTES = _STANDARD | {"trace_id", "span_id", "trace_sampled"}


def _severity(levelno: int) -> SeverityNumber:
    if levelno >= logging.CRITICAL:
        return SeverityNumber.FATAL
    if levelno >= logging.ERROR:
        return SeverityNumber.ERROR
    if levelno >= logging.WARNING:
        return SeverityNumber.WARN
    if levelno >= logging.INFO:
        return SeverityNumber.INFO
    if levelno >= logging.DEBUG:
        return SeverityNumber.DEBUG
    return SeverityNumber.TRACE


_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


class OtlpLogHandler(logging.Handler):
    """Python log records to an SDK LoggerProvider (whose processor exports them).

    The OTLP record carries the trace context natively (trace and span id, flags),
    the message as body, `node` and `extra=` fields as attributes, code location
    and exception details as the semantic conventions name them.
    """

    def __init__(self, provider: LoggerProvider, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.provider = provider
        self._loggers: dict[str, Logger] = {}

    def filter(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        if record.name.partition(".")[0] in _NOT_EXPORTED:
            return False
        return bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = self._loggers.get(record.name)
            if logger is None:
                logger = self._loggers[record.name] = self.provider.get_logger(record.name)
            attributes: dict[str, Any] = {
                "code.file.path": record.pathname, "code.function.name": record.funcName,
                "code.line.number": record.lineno,
            }
            for key, value in record.__dict__.items():
                if key not in _SKIPPED_ATTRIBUTES and value is not None and value != "":
                    attributes[key] = value if isinstance(value, str | bool | int | float) else str(value)
            if record.exc_info and record.exc_info[0] is not None:
                exc_type, exc, tb = record.exc_info
                attributes["exception.type"] = exc_type.__qualname__
                attributes["exception.message"] = str(exc)
                attributes["exception.stacktrace"] = "".join(traceback.format_exception(exc_type, exc, tb))
            logger.emit(
                timestamp=int(record.created * 1e9),
                context=otel_context.get_current(),
                severity_number=_severity(record.levelno),
                severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
                body=record.getMessage(),
                attributes=attributes,
            )
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        pass  # the processor exports on its own thread; Telemetry.shutdown flushes it
