"""`python -m bench.log_handler`: per-record cost of the OTLP log handlers' emit path.

Ours (tracing.log_correlation.OtlpLogHandler) against the SDK's LoggingHandler,
each feeding a LoggerProvider whose BatchLogRecordProcessor's exporter drops
every batch, with the record factory installed (as in a node). Records are
logged outside a span and inside one; `null` is a handler that does nothing
(the cost of logging.Logger itself and the record factory). Figures are the
median of several runs, in µs per record.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tracing.log_correlation import (
    CORRELATION_FIELDS,
    OtlpLogHandler,
    install_record_factory,
    uninstall_record_factory,
)
from tracing.sdk_compat import (
    BatchLogRecordProcessor,
    LoggerProvider,
    LoggingHandler,
    LogRecordExporter,
    LogRecordExportResult,
    LogRecordProcessor,
    ReadWriteLogRecord,
)


class DropExporter(LogRecordExporter):
    def export(self, batch: Sequence[object]) -> LogRecordExportResult:  # type: ignore[override]
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class NullHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


class StripCorrelation(LogRecordProcessor):
    """What the SDK's handler would need to match ours: the record factory's fields
    (carried natively, or by the resource) taken out of the attributes again."""

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        attributes = log_record.log_record.attributes
        if attributes is not None:
            for key in CORRELATION_FIELDS:
                if key in attributes:
                    del attributes[key]  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _provider(strip: bool = False) -> LoggerProvider:
    provider = LoggerProvider(shutdown_on_exit=False)
    if strip:
        provider.add_log_record_processor(StripCorrelation())
    provider.add_log_record_processor(BatchLogRecordProcessor(DropExporter(), max_queue_size=1 << 20))
    return provider


def _sdk(provider: LoggerProvider) -> logging.Handler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return LoggingHandler(logger_provider=provider)


HANDLERS: dict[str, tuple[Callable[[LoggerProvider], logging.Handler], bool]] = {
    "null": (lambda provider: NullHandler(), False),
    "ours": (OtlpLogHandler, False),
    "sdk": (_sdk, False),
    "sdk+strip": (_sdk, True),
}


def one_run(make: Callable[[LoggerProvider], logging.Handler], strip: bool, records: int,
            in_span: bool) -> float:
    """µs per record for one run."""
    provider = _provider(strip)
    handler = make(provider)
    logger = logging.getLogger("bench.log_handler")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    span = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1)))
    try:
        with trace.use_span(span) if in_span else _nothing():
            started = time.perf_counter_ns()
            for i in range(records):
                logger.info("request %d done", i, extra={"kv_key": "k1"})
            elapsed = time.perf_counter_ns() - started
    finally:
        logger.handlers[:] = []
        provider.shutdown()
    return elapsed / records / 1000


class _nothing:  # contextlib.nullcontext, without its typing fuss
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.log_handler", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    install_record_factory()
    try:
        print(f"log handler emit path: {args.records} records, median of {args.runs} runs, µs/record")
        # Runs interleaved (each run times every handler in turn), so a busy machine
        # slows all of them alike rather than one.
        cases = [(name, in_span) for name in HANDLERS for in_span in (False, True)]
        times: dict[tuple[str, bool], list[float]] = {case: [] for case in cases}
        for name, in_span in cases:
            one_run(*HANDLERS[name], 1000, in_span)  # warm up
        for _ in range(args.runs):
            for name, in_span in cases:
                times[name, in_span].append(one_run(*HANDLERS[name], args.records, in_span))
        print(f"{'handler':<10} {'outside':>9} {'in span':>9}")
        for name in HANDLERS:
            outside, inside = (statistics.median(times[name, in_span]) for in_span in (False, True))
            print(f"{name:<10} {outside:>9.2f} {inside:>9.2f}", flush=True)
    finally:
        uninstall_record_factory()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
