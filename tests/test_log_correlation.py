"""Logs correlated with traces: the fields every record carries, the text and JSON
formats, setup_logging, and the OTLP log export's wiring (to an in-memory exporter:
the e2e OTLP receiver speaks traces only)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext

from server.logs import setup_logging
from server.serve import RunningNode
from tests.e2e.processes import node_process
from tests.harness import make_provider, wait_for_spans
from tracing.errors import TelemetryConfigError
from tracing.lean import tracer_for
from tracing.log_correlation import (
    JsonFormatter,
    OtlpLogHandler,
    TextFormatter,
    install_record_factory,
    log_identity,
    make_stream_handler,
    set_log_identity,
)
from tracing.setup import configure_tracing, load_tracing_config

log = logging.getLogger("tests.log_correlation")


@pytest.fixture(autouse=True)
def correlated() -> Iterator[None]:
    """The record factory on, a known identity, and the identity restored afterwards."""
    install_record_factory()
    before = log_identity()
    set_log_identity(service="svc", node="node-a")
    yield
    set_log_identity(service=before[0], node=before[1])


def hex_ids(ctx: SpanContext) -> tuple[str, str]:
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@pytest.fixture
def stream_logger() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    """A logger of its own writing through a text handler into a buffer."""
    buffer = io.StringIO()
    handler = make_stream_handler("text", buffer)
    logger = logging.getLogger("tests.log_correlation.stream")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, buffer, handler
    logger.removeHandler(handler)
    logger.propagate = True


# -- the fields ----------------------------------------------------------------------

def test_records_in_a_span_carry_its_ids_node_and_service(caplog: pytest.LogCaptureFixture) -> None:
    tracer = tracer_for(make_provider(InMemorySpanExporter()), "t")
    with caplog.at_level(logging.INFO, logger=log.name):
        log.info("outside")
        with tracer.start_as_current_span("work") as span:
            log.info("inside")
            with tracer.start_as_current_span("child") as child:
                log.info("in the child")
        log.info("after")
    outside, inside, in_child, after = caplog.records
    assert (inside.trace_id, inside.span_id) == hex_ids(span.get_span_context())  # type: ignore[attr-defined]
    assert (in_child.trace_id, in_child.span_id) == hex_ids(child.get_span_context())  # type: ignore[attr-defined]
    assert len(inside.trace_id) == 32 and len(inside.span_id) == 16  # type: ignore[attr-defined]
    assert inside.trace_sampled is True  # type: ignore[attr-defined]
    for record in (outside, after):
        assert record.trace_id == "" and record.span_id == ""  # type: ignore[attr-defined]
    for record in caplog.records:
        assert record.node == "node-a" and record.service == "svc"  # type: ignore[attr-defined]


def test_an_unsampled_span_still_gives_its_ids(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    tracer = tracer_for(make_provider(InMemorySpanExporter(), ALWAYS_OFF), "t")
    with caplog.at_level(logging.INFO, logger=log.name), tracer.start_as_current_span("dropped") as span:
        log.info("inside")
    record = caplog.records[0]
    assert (record.trace_id, record.span_id) == hex_ids(span.get_span_context())  # type: ignore[attr-defined]
    assert record.trace_sampled is False  # type: ignore[attr-defined]


async def test_a_log_line_the_server_writes_inside_a_request_carries_the_requests_span(
        node: RunningNode, http: httpx.AsyncClient, exporter: InMemorySpanExporter,
        caplog: pytest.LogCaptureFixture) -> None:
    def boom() -> None:
        raise RuntimeError("injected fault")

    node.node.store.get = lambda key: boom()  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.ERROR, logger="server"):
        r = await http.get("/kv/x")
        assert r.status_code == 500
        span = (await wait_for_spans(exporter, "GET /kv/{key}"))[0]
    records = [rec for rec in caplog.records if "unhandled error in GET /kv/x" in rec.getMessage()]
    assert len(records) == 1, [rec.getMessage() for rec in caplog.records]
    assert span.context is not None
    assert (records[0].trace_id, records[0].span_id) == hex_ids(span.context)  # type: ignore[attr-defined]
    assert records[0].node == "node-a" and records[0].service == "svc"  # type: ignore[attr-defined]


# -- formats -------------------------------------------------------------------------

def test_the_text_format_appends_the_ids_inside_a_span(
        stream_logger: tuple[logging.Logger, io.StringIO, logging.Handler]) -> None:
    logger, buffer, _ = stream_logger
    tracer = tracer_for(make_provider(InMemorySpanExporter()), "t")
    logger.info("plain %s", "line")
    with tracer.start_as_current_span("work") as span:
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed %d", 7)
    lines = buffer.getvalue().splitlines()
    assert lines[0].endswith("INFO tests.log_correlation.stream: plain line")
    trace_id, span_id = hex_ids(span.get_span_context())
    assert lines[1].endswith(
        f"ERROR tests.log_correlation.stream: failed 7 trace_id={trace_id} span_id={span_id}")
    assert lines[2] == "Traceback (most recent call last):"  # the ids stay on the message's line
    assert "ValueError: bad" in lines[-1]


def test_the_json_format_is_one_valid_object_per_line() -> None:
    buffer = io.StringIO()
    handler = make_stream_handler("json", buffer)
    assert isinstance(handler.formatter, JsonFormatter)
    logger = logging.getLogger("tests.log_correlation.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    tracer = tracer_for(make_provider(InMemorySpanExporter()), "t")
    try:
        logger.info("outside \"quoted\"\nsecond line")
        with tracer.start_as_current_span("work") as span:
            logger.warning("inside %s", "span", extra={"kv_key": "k1", "count": 3})
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3  # newlines inside messages and tracebacks are escaped
    outside, inside, failed = (json.loads(line) for line in lines)
    assert outside["message"] == "outside \"quoted\"\nsecond line"
    assert outside["level"] == "INFO" and outside["logger"] == "tests.log_correlation.json"
    assert outside["node"] == "node-a" and outside["service"] == "svc"
    assert "trace_id" not in outside and "span_id" not in outside
    assert outside["time"].endswith("Z") and "T" in outside["time"]
    trace_id, span_id = hex_ids(span.get_span_context())
    assert (inside["trace_id"], inside["span_id"], inside["trace_sampled"]) == (trace_id, span_id, True)
    assert inside["message"] == "inside span" and inside["level"] == "WARNING"
    assert inside["kv_key"] == "k1" and inside["count"] == 3  # extra= fields
    assert failed["trace_id"] == trace_id and "ZeroDivisionError" in failed["exception"]


# -- setup_logging ---------------------------------------------------------------------

def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "otel.toml"
    path.write_text(text)
    return path


def test_setup_logging_reads_the_format_and_service_from_the_telemetry_config(tmp_path: Path) -> None:
    conf = _conf(tmp_path, '[resource]\nservice_name = "shop"\n[logs]\nformat = "json"\n')
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("debug", telemetry_config=conf, node="n9", stream=buffer)
    try:
        assert handler is not None and isinstance(handler.formatter, JsonFormatter)
        assert root.level == logging.DEBUG
        logging.getLogger("server.x").debug("hello")
        assert log_identity() == ("shop", "n9")
        line = json.loads(buffer.getvalue().splitlines()[-1])
        assert (line["message"], line["node"], line["service"]) == ("hello", "n9", "shop")
        # Called again, it replaces its own handler rather than adding a second one.
        again = setup_logging("info", log_format="text", stream=buffer)
        assert again is not None and isinstance(again.formatter, TextFormatter)
        assert handler not in root.handlers and again in root.handlers
        handler = again
    finally:
        if handler is not None:
            root.removeHandler(handler)
        root.setLevel(level)


def test_the_shipped_config_logs_text_without_otlp() -> None:
    from server.settings import PROJECT_ROOT

    cfg = load_tracing_config(PROJECT_ROOT / "conf" / "opentelemetry.toml", environ={})
    assert (cfg.logs.format, cfg.logs.otlp_export) == ("text", False)


@pytest.mark.parametrize(("text", "needle"), [
    ("[logs]\nformat = 'xml'\n", "logs.format must be \"text\" or \"json\""),
    ("[logs]\nlevel = 'INFO'\n", "unknown key logs.level"),
    ("[logs]\notlp_export = 'yes'\n", "logs.otlp_export must be true or false"),
    ("logs = 3\n", "logs must be a table"),
])
def test_bad_logs_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(TelemetryConfigError, match=needle):
        load_tracing_config(_conf(tmp_path, text), environ={})


def test_otel_logs_exporter_overrides_the_file(tmp_path: Path) -> None:
    off, on = _conf(tmp_path, ""), tmp_path / "on.toml"
    on.write_text("[logs]\notlp_export = true\n")
    assert load_tracing_config(off, environ={"OTEL_LOGS_EXPORTER": "otlp"}).logs.otlp_export is True
    assert load_tracing_config(on, environ={"OTEL_LOGS_EXPORTER": "none"}).logs.otlp_export is False
    assert load_tracing_config(on, environ={"OTEL_SDK_DISABLED": "true"}).logs.otlp_export is False
    assert load_tracing_config(on, environ={}).logs.otlp_export is True
    with pytest.raises(TelemetryConfigError, match="OTEL_LOGS_EXPORTER 'console'"):
        load_tracing_config(off, environ={"OTEL_LOGS_EXPORTER": "console"})


# -- OTLP export -------------------------------------------------------------------------

def test_otlp_log_export_sends_records_with_their_trace(tmp_path: Path) -> None:
    conf = _conf(tmp_path, '[resource]\nservice_name = "shop"\n[logs]\notlp_export = true\n')
    logs = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    spans = InMemorySpanExporter()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    telemetry = configure_tracing(conf, "node-7", exporter=spans, log_exporter=logs, environ={})
    try:
        handler = telemetry.log_handler
        assert isinstance(handler, OtlpLogHandler) and handler in root.handlers
        assert log_identity() == ("shop", "node-7")  # the node's name, once it is known
        tracer = tracer_for(telemetry.provider, "t")
        with tracer.start_as_current_span("work") as span:
            log.warning("inside %s", "a span", extra={"kv_key": "k1"})
        log.info("outside")
        logging.getLogger("opentelemetry.exporter.x").warning("an exporter's own trouble")
        logging.getLogger("tests.quiet").debug("below the level")
    finally:
        assert telemetry.shutdown(10)  # flushes the batch processor
        root.setLevel(level)
    assert telemetry.log_handler is None and handler not in root.handlers
    records = [r.log_record for r in logs.get_finished_logs()]
    assert [r.body for r in records] == ["inside a span", "outside"]
    inside, outside = records
    ctx = span.get_span_context()
    assert (inside.trace_id, inside.span_id) == (ctx.trace_id, ctx.span_id)
    assert inside.trace_flags is not None and inside.trace_flags.sampled
    assert inside.severity_text == "WARN" and inside.severity_number is not None
    assert inside.severity_number.name == "WARN"
    attributes = dict(inside.attributes or {})
    assert attributes["kv_key"] == "k1" and "node" not in attributes  # the resource names the node
    assert attributes["code.function.name"] == "test_otlp_log_export_sends_records_with_their_trace"
    assert "trace_id" not in attributes  # carried natively, not twice
    assert not outside.trace_id
    resource = logs.get_finished_logs()[0].resource.attributes
    assert resource["service.name"] == "shop" and resource["service.instance.id"] == "node-7"
    # Spans and logs of one node share the resource.
    assert spans.get_finished_spans()[0].resource.attributes["service.instance.id"] == "node-7"


def test_no_otlp_log_handler_unless_asked(tmp_path: Path) -> None:
    telemetry = configure_tracing(_conf(tmp_path, ""), "n", exporter=InMemorySpanExporter(), environ={})
    try:
        assert telemetry.log_provider is None and telemetry.log_handler is None
        assert not any(isinstance(h, OtlpLogHandler) for h in logging.getLogger().handlers)
    finally:
        telemetry.shutdown(5)


# -- a real process ----------------------------------------------------------------------

@pytest.mark.e2e
async def test_a_node_process_logs_json_lines_with_its_node_name(tmp_path: Path) -> None:
    conf = _conf(tmp_path, '[logs]\nformat = "json"\n')
    async with node_process({"WEBSERVER_TELEMETRY_CONFIG": str(conf)}) as node:
        with trio.fail_after(10):
            while "serving on" not in node.stderr():
                await trio.sleep(0.05)
        assert await node.terminate(15) == 0, node.describe()
        stderr = node.stderr()
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    serving = next(line for line in lines if "serving on" in line["message"])
    assert serving["node"] == node.node_name and serving["node"].startswith("webserver@127.0.0.1:")
    assert serving["service"] == "webserver" and serving["logger"] == "server"
