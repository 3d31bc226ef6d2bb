"""The rule-based, parent-based sampler: ratios, rules, parents, determinism across
sampler instances and across the nodes of a real (in-process) cluster, its
configuration and the environment's precedence over it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBasedTraceIdRatio,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState

from server.serve import RunningNode
from server.settings import PROJECT_ROOT
from tests.harness import make_provider, start_sampled_node, wait_for_spans
from tracing.errors import TelemetryConfigError
from tracing.lean import LeanTracer, tracer_for
from tracing.otel_env import read_otel_env
from tracing.sampling import (
    RuleBasedSampler,
    SamplerConfig,
    SamplingRule,
    build_sampler,
    describe_sampler,
    parse_sampler_table,
    with_environment,
)
from tracing.setup import configure_tracing, load_tracing_config

SHIPPED_CONF = PROJECT_ROOT / "conf" / "opentelemetry.toml"
SECRET = "test-cluster-secret-0123456789abcdef"


def sampled(sampler: RuleBasedSampler, trace_id: int, name: str = "span",
            attributes: dict[str, Any] | None = None, parent: Context | None = None) -> bool:
    result = sampler.should_sample(parent if parent is not None else Context(), trace_id, name,
                                   SpanKind.SERVER, attributes)
    return result.decision is Decision.RECORD_AND_SAMPLE


def remote_parent(is_sampled: bool, state: TraceState | None = None) -> Context:
    ctx = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED if is_sampled else TraceFlags.DEFAULT),
                      trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(ctx))


# -- ratios and determinism ------------------------------------------------------

def test_a_ten_percent_rule_keeps_about_ten_percent() -> None:
    sampler = RuleBasedSampler(1.0, [SamplingRule(0.1, name="websocket.message")])
    rng = random.Random(20240601)
    ids = [rng.getrandbits(128) for _ in range(100_000)]
    kept = sum(sampled(sampler, tid, "websocket.message") for tid in ids)
    assert 8_000 <= kept <= 12_000, kept
    # Roots the rule does not match take default_ratio (1.0 here): all kept.
    assert all(sampled(sampler, tid, "kv.put") for tid in ids[:1000])


def test_the_same_trace_id_gets_the_same_decision_in_two_instances() -> None:
    cfg = parse_sampler_table({"default_ratio": 0.5, "rules": [{"name": "websocket.message", "ratio": 0.2}]})
    first, second = RuleBasedSampler.from_config(cfg), RuleBasedSampler.from_config(cfg)
    reference = TraceIdRatioBased(0.2)  # the decision is TraceIdRatioBased's, on the low 64 bits
    rng = random.Random(7)
    decisions = []
    for _ in range(20_000):
        tid = rng.getrandbits(128)
        a, b = sampled(first, tid, "websocket.message"), sampled(second, tid, "websocket.message")
        assert a == b
        assert a == (reference.should_sample(None, tid, "x").decision is Decision.RECORD_AND_SAMPLE)
        assert sampled(first, tid, "other") == sampled(second, tid, "other")
        decisions.append(a)
    assert 0.18 < sum(decisions) / len(decisions) < 0.22
    # Only the low 64 bits count: the high half of the trace id changes nothing.
    tid = rng.getrandbits(64)
    assert {sampled(first, (high << 64) | tid, "other") for high in range(1, 200)} == {
        sampled(first, tid, "other")}


def test_ratios_zero_and_one_are_exact() -> None:
    never = RuleBasedSampler(0.0)
    always = RuleBasedSampler(1.0, [SamplingRule(1.0, path="/x")])
    rng = random.Random(3)
    for tid in [1, (1 << 64) - 1, (1 << 128) - 1, *(rng.getrandbits(128) for _ in range(5000))]:
        assert not sampled(never, tid)
        assert sampled(always, tid)


# -- parents ------------------------------------------------------------------------

def test_children_follow_their_parent_whatever_the_rules() -> None:
    drop_everything = RuleBasedSampler(0.0, [SamplingRule(0.0, path="/health"),
                                             SamplingRule(0.0, name="websocket.message")])
    keep_everything = RuleBasedSampler(1.0)
    state = TraceState([("vendor", "v1")])
    rng = random.Random(11)
    for _ in range(200):
        tid = rng.getrandbits(128)
        # A sampled remote parent (another node, a client's traceparent): sampled, even
        # for a span every rule would drop as a root.
        result = drop_everything.should_sample(remote_parent(True, state), tid, "websocket.message",
                                               SpanKind.SERVER, {"url.path": "/health"})
        assert result.decision is Decision.RECORD_AND_SAMPLE
        assert result.trace_state == state  # the parent's tracestate is kept
        assert result.attributes == {"url.path": "/health"}  # the SDK's Tracer builds spans from them
        # An unsampled parent: dropped, even where every root is kept.
        result = keep_everything.should_sample(remote_parent(False, state), tid, "kv.put")
        assert result.decision is Decision.DROP and result.trace_state == state


def test_local_children_through_the_lean_tracer() -> None:
    exporter = InMemorySpanExporter()
    provider = make_provider(exporter, RuleBasedSampler(1.0, [SamplingRule(0.0, name="noisy")]))
    tracer = tracer_for(provider, "test")
    with tracer.start_as_current_span("noisy") as root:  # a root the rule drops
        assert not root.is_recording() and not root.get_span_context().trace_flags.sampled
        with tracer.start_as_current_span("child") as child:  # no rule for it, but its parent is out
            assert not child.is_recording()
    with tracer.start_as_current_span("kept") as root:
        with tracer.start_as_current_span("noisy") as child:  # as a child the rule does not apply
            assert child.is_recording()
            assert child.get_span_context().trace_id == root.get_span_context().trace_id
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["kept", "noisy"]


# -- rules ----------------------------------------------------------------------------

def test_rules_match_what_a_span_has_when_it_starts() -> None:
    sampler = RuleBasedSampler(0.5, [
        SamplingRule(0.0, path="/health"),
        SamplingRule(0.0, path="/debug/*"),
        SamplingRule(0.1, route="/kv/{key}"),
        SamplingRule(0.2, route="/ws"),
        SamplingRule(0.3, name="websocket.message"),
        SamplingRule(0.4, name="GET", path="/nodes"),  # both must match
        SamplingRule(0.9, name="websocket.message"),  # shadowed: the first match wins
    ])
    http = {"http.request.method": "GET"}
    cases: list[tuple[str, dict[str, Any] | None, float]] = [
        ("GET", {**http, "url.path": "/health"}, 0.0),
        ("GET", {**http, "url.path": "/healthz"}, 0.5),
        ("GET", {**http, "url.path": "/debug/telemetry"}, 0.0),
        ("GET", {**http, "url.path": "/kv/a"}, 0.1),
        ("PUT", {**http, "url.path": "/kv/a/b/c"}, 0.1),  # keys may hold "/"
        ("POST", {**http, "url.path": "/kv"}, 0.5),
        ("WS /ws", {"http.route": "/ws"}, 0.2),  # a route given at start is used as is
        ("WS /ws", {"http.route": "/other", "url.path": "/ws"}, 0.5),
        ("websocket.message", {"websocket.message_type": "chat"}, 0.3),
        ("websocket.message", None, 0.3),
        ("GET", {**http, "url.path": "/nodes"}, 0.4),
        ("POST", {**http, "url.path": "/nodes"}, 0.5),
        ("kv.put", None, 0.5),
    ]
    for name, attributes, ratio in cases:
        assert sampler.root_ratio(name, attributes) == ratio, (name, attributes)


async def test_the_http_span_starts_with_what_a_path_rule_needs(nursery: trio.Nursery) -> None:
    """The middleware names its span by route only after routing, so a rule sees `GET`
    and the start attributes: url.path must be among them."""
    seen: list[tuple[str, dict[str, Any]]] = []

    class Recording(RuleBasedSampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> Any:
            seen.append((name, dict(attributes or {})))
            return super().should_sample(parent_context, trace_id, name, kind, attributes, links)

    running = await start_sampled_node(nursery, InMemorySpanExporter(), Recording(1.0))
    async with httpx.AsyncClient(base_url=running.url) as http:
        await http.get("/health")
    running.stop()
    name, attributes = seen[0]
    assert name == "GET" and attributes["url.path"] == "/health"


# -- a real node ------------------------------------------------------------------------

@pytest.fixture
async def shipped_node(nursery: trio.Nursery, exporter: InMemorySpanExporter) -> AsyncIterator[RunningNode]:
    """A node sampling as conf/opentelemetry.toml says."""
    sampler = build_sampler(load_tracing_config(SHIPPED_CONF, environ={}).sampler)
    running = await start_sampled_node(nursery, exporter, sampler)
    yield running
    running.stop()


async def test_health_checks_are_never_sampled_with_the_shipped_config(
        shipped_node: RunningNode, exporter: InMemorySpanExporter) -> None:
    async with httpx.AsyncClient(base_url=shipped_node.url, timeout=10) as http:
        for _ in range(200):
            assert (await http.get("/health")).status_code == 200
        assert (await http.get("/")).status_code == 200
        await wait_for_spans(exporter, "GET /")
        assert (await http.post("/kv", json={"key": "k", "value": "v"})).status_code == 200
        await wait_for_spans(exporter, "POST /kv")
        await trio.sleep(0.1)
        names = [s.name for s in exporter.get_finished_spans()]
        assert "GET /health" not in names, names
        assert sorted(names) == ["GET /", "POST /kv", "kv.put"]

        # A client that sends a sampled traceparent still gets its /health span (parent-based)...
        exporter.clear()
        tid = "0af7651916cd43dd8448eb211c80319c"
        await http.get("/health", headers={"traceparent": f"00-{tid}-b7ad6b7169203331-01"})
        span = (await wait_for_spans(exporter, "GET /health"))[0]
        assert format(span.context.trace_id, "032x") == tid
        # ...and one whose parent was not sampled gets none, even for a route always sampled.
        exporter.clear()
        await http.get("/", headers={"traceparent": f"00-{tid}-b7ad6b7169203331-00"})
        await http.get("/health")
        await trio.sleep(0.1)
        assert exporter.get_finished_spans() == ()


# -- a cluster: one trace is sampled on every node or on none ---------------------------

async def _wait_for(predicate: Callable[[], Any], timeout: float = 10) -> Any:
    with trio.fail_after(timeout):
        while not (result := predicate()):
            await trio.sleep(0.02)
    return result


def _by_key(exporter: InMemorySpanExporter, name: str) -> dict[str, ReadableSpan]:
    return {str((s.attributes or {}).get("kv.key")): s for s in exporter.get_finished_spans()
            if s.name == name}


async def test_a_cross_node_write_is_sampled_on_every_node_or_on_none(nursery: trio.Nursery) -> None:
    fast = {"cluster_bind": "127.0.0.1:0", "cluster_secret": SECRET, "heartbeat_interval": "0.2",
            "failure_timeout": "1.0", "cluster_request_timeout": "2.0"}
    cfg = parse_sampler_table({"default_ratio": 0.5})
    exporters = [InMemorySpanExporter() for _ in range(3)]
    nodes: list[RunningNode] = []
    first = None
    for i, exporter in enumerate(exporters):
        extra = {"node_name": f"n{i + 1}"} | ({"peers": first} if first else {})
        # Each node has its own sampler instance, as separate processes would.
        running = await start_sampled_node(nursery, exporter, build_sampler(cfg), **fast, **extra)
        assert running.node.mesh is not None
        first = first or running.node.mesh.address
        nodes.append(running)
    for running in nodes:
        await _wait_for(lambda r=running: sorted(r.node.live_members()) == ["n1", "n2", "n3"])  # type: ignore[misc]

    keys = [f"key-{i}" for i in range(60)]
    async with httpx.AsyncClient(base_url=nodes[0].url, timeout=10) as http:
        for key in keys:
            r = await http.post("/kv", json={"key": key, "value": "v"})
            assert r.status_code == 200, r.text
    coordinated = _by_key(exporters[0], "kv.put")
    traced = set(coordinated)
    # A write returns at its quorum: give the last replica's span time to end.
    for exporter in exporters[1:]:
        await _wait_for(lambda e=exporter: traced <= set(_by_key(e, "kv.put")))  # type: ignore[misc]
    await trio.sleep(0.3)

    assert 10 <= len(traced) <= 50, len(traced)  # both outcomes occur at ratio 0.5
    roots = {format(s.context.trace_id, "032x") for s in exporters[0].get_finished_spans()
             if s.name == "POST /kv"}
    for key in keys:
        on_nodes = [_by_key(e, "kv.put").get(key) for e in exporters]
        if key in traced:
            assert all(span is not None for span in on_nodes), key
            trace_ids = {span.context.trace_id for span in on_nodes if span is not None}
            assert len(trace_ids) == 1 and format(trace_ids.pop(), "032x") in roots
        else:
            assert on_nodes == [None, None, None], key
    assert len(roots) == len(traced)
    for running in nodes:
        running.stop()


# -- configuration -------------------------------------------------------------------------

def test_the_shipped_config_drops_probes_scrapes_and_debug_pages_only() -> None:
    cfg = load_tracing_config(SHIPPED_CONF, environ={})
    assert cfg.sampler.default_ratio == 1.0
    assert cfg.sampler.rules == (SamplingRule(0.0, path="/health"), SamplingRule(0.0, path="/metrics"),
                                 SamplingRule(0.0, path="/debug/*"), SamplingRule(0.0, path="/static/*"))
    sampler = build_sampler(cfg.sampler)
    assert isinstance(sampler, RuleBasedSampler)
    description = ("ParentBasedRules{default=1.0,rules=[{path=/health}:0.0,{path=/metrics}:0.0,"
                   "{path=/debug/*}:0.0,{path=/static/*}:0.0]}")
    assert sampler.describe() == {
        "sampler": "parentbased_rules", "parent_based": True, "default_ratio": 1.0,
        "rules": [{"path": "/health", "ratio": 0.0}, {"path": "/metrics", "ratio": 0.0},
                  {"path": "/debug/*", "ratio": 0.0}, {"path": "/static/*", "ratio": 0.0}],
        "description": description,
    }
    assert sampler.get_description() == description


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "otel.toml"
    path.write_text(text)
    return path


def test_a_full_sampler_table(tmp_path: Path) -> None:
    path = _conf(tmp_path, """
[traces.sampler]
default_ratio = 0.25
[[traces.sampler.rules]]
name = "websocket.message"
ratio = 0.1
[[traces.sampler.rules]]
route = "/kv/{key}"
ratio = 1
[[traces.sampler.rules]]
name = "GET"
path = "/health"
ratio = 0
""")
    cfg = load_tracing_config(path, environ={}).sampler
    assert cfg == SamplerConfig(0.25, (SamplingRule(0.1, name="websocket.message"),
                                       SamplingRule(1.0, route="/kv/{key}"),
                                       SamplingRule(0.0, name="GET", path="/health")))
    described = describe_sampler(build_sampler(cfg))
    assert described["rules"] == [{"name": "websocket.message", "ratio": 0.1},
                                  {"route": "/kv/{key}", "ratio": 1.0},
                                  {"name": "GET", "path": "/health", "ratio": 0.0}]
    assert "name=GET,path=/health" in described["description"]


@pytest.mark.parametrize(("text", "needle"), [
    ("[traces.sampler]\ndefault_ratio = 1.5\n", "traces.sampler.default_ratio must be from 0.0 to 1.0"),
    ("[traces.sampler]\ndefault_ratio = -0.1\n", "traces.sampler.default_ratio"),
    ("[traces.sampler]\ndefault_ratio = 'all'\n", "traces.sampler.default_ratio must be a number"),
    ("[traces.sampler]\nratio = 0.5\n", "unknown key traces.sampler.ratio"),
    ("[traces.sampler]\nrules = 3\n", "traces.sampler.rules must be an array"),
    ("[[traces.sampler.rules]]\npath = '/a'\nratio = 2\n", r"traces.sampler.rules\[0\].ratio must be from"),
    ("[[traces.sampler.rules]]\npath = '/a'\nratio = true\n", r"rules\[0\].ratio must be a number"),
    ("[[traces.sampler.rules]]\npath = '/a'\n", r"traces.sampler.rules\[0\].ratio is missing"),
    ("[[traces.sampler.rules]]\nname = 'a'\nratio = 1\n[[traces.sampler.rules]]\nratio = 0.5\n",
     r"traces.sampler.rules\[1\] has no matcher"),
    ("[[traces.sampler.rules]]\npath = '/a'\nratio = 1\nmethod = 'GET'\n",
     r"unknown key traces.sampler.rules\[0\].method"),
    ("[[traces.sampler.rules]]\nname = ''\nratio = 1\n", r"rules\[0\].name must be a non-empty string"),
    ("[[traces.sampler.rules]]\npath = 'health'\nratio = 1\n", r"rules\[0\].path must start with /"),
    ("[[traces.sampler.rules]]\nname = 'GET /health'\nratio = 0\n", "match it with route or path"),
    ("[traces]\nsampler = 1\n", "traces.sampler must be a table"),
])
def test_bad_sampler_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(TelemetryConfigError, match=needle) as caught:
        load_tracing_config(_conf(tmp_path, text), environ={})
    assert str(tmp_path) in str(caught.value)  # and the file


def test_the_standard_variables_win_over_the_file(tmp_path: Path) -> None:
    path = _conf(tmp_path, "[traces.sampler]\ndefault_ratio = 0.1\n"
                           "[[traces.sampler.rules]]\npath = '/health'\nratio = 0\n")
    file_only = load_tracing_config(path, environ={}).sampler
    assert isinstance(build_sampler(file_only), RuleBasedSampler)
    assert build_sampler(load_tracing_config(path, environ={"OTEL_TRACES_SAMPLER": "always_on"})
                         .sampler) is ALWAYS_ON
    assert build_sampler(load_tracing_config(path, environ={"OTEL_TRACES_SAMPLER": "always_off"})
                         .sampler) is ALWAYS_OFF
    assert build_sampler(load_tracing_config(path, environ={"OTEL_TRACES_SAMPLER": "parentbased_always_on"})
                         .sampler) is DEFAULT_ON
    ratio = build_sampler(load_tracing_config(path, environ={
        "OTEL_TRACES_SAMPLER": "TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}).sampler)
    assert isinstance(ratio, TraceIdRatioBased) and ratio.rate == 0.25
    parent_ratio = build_sampler(load_tracing_config(path, environ={
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}).sampler)  # no ARG: 1.0, as the SDK
    assert isinstance(parent_ratio, ParentBasedTraceIdRatio)
    description = parent_ratio.get_description()  # type: ignore[no-untyped-call]
    assert description.startswith("ParentBased{root:TraceIdRatioBased{1.0}")
    # The ARG alone changes nothing (as in the SDK).
    assert load_tracing_config(path, environ={"OTEL_TRACES_SAMPLER_ARG": "0.5"}).sampler == file_only
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER 'sometimes' is not known"):
        load_tracing_config(path, environ={"OTEL_TRACES_SAMPLER": "sometimes"})
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER_ARG must be a number"):
        with_environment(file_only, read_otel_env({"OTEL_TRACES_SAMPLER": "traceidratio",
                                                  "OTEL_TRACES_SAMPLER_ARG": "2"}))
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER_ARG must be a number"):
        with_environment(file_only, read_otel_env({"OTEL_TRACES_SAMPLER": "traceidratio",
                                                  "OTEL_TRACES_SAMPLER_ARG": "x"}))


def test_configure_tracing_passes_the_sampler(tmp_path: Path) -> None:
    path = _conf(tmp_path, "[traces.sampler]\ndefault_ratio = 0.5\n")
    telemetry = configure_tracing(path, "n1", exporter=InMemorySpanExporter(), environ={})
    try:
        assert isinstance(telemetry.provider, TracerProvider)
        assert isinstance(telemetry.provider.sampler, RuleBasedSampler)
        assert telemetry.provider.sampler is telemetry.sampler
        assert telemetry.describe_sampling() == {
            **telemetry.provider.sampler.describe(), "source": "traces.sampler",
            "config": {"default_ratio": 0.5, "rules": [], "env_sampler": None, "env_arg": None}}
    finally:
        telemetry.shutdown(5)
    env_telemetry = configure_tracing(path, "n1", exporter=InMemorySpanExporter(),
                                      environ={"OTEL_TRACES_SAMPLER": "always_on"})
    try:
        assert env_telemetry.describe_sampling()["source"] == "OTEL_TRACES_SAMPLER"
        assert env_telemetry.describe_sampling()["description"] == "AlwaysOnSampler"
        assert env_telemetry.describe_sampling()["config"]["default_ratio"] == 0.5  # what the file said
    finally:
        env_telemetry.shutdown(5)


@pytest.mark.parametrize("text", [
    "",  # no table at all
    "[traces.sampler]\ndefault_ratio = 1.0\n",
    "[traces.sampler]\n[[traces.sampler.rules]]\nname = 'x'\nratio = 1.0\n",  # rules that keep everything
])
def test_a_default_config_keeps_the_lean_tracers_fast_path(tmp_path: Path, text: str) -> None:
    telemetry = configure_tracing(_conf(tmp_path, text), "n1", exporter=InMemorySpanExporter(), environ={})
    try:
        assert isinstance(telemetry.provider, TracerProvider)
        assert telemetry.provider.sampler is DEFAULT_ON
        tracer = tracer_for(telemetry.provider, "t")
        assert isinstance(tracer, LeanTracer) and tracer.sampler is DEFAULT_ON
    finally:
        telemetry.shutdown(5)


def test_the_lean_tracers_shortcut_decides_as_should_sample() -> None:
    """tracing/lean.py asks `sampled()` instead of `should_sample()`: the same answers."""
    sampler = build_sampler(load_tracing_config(SHIPPED_CONF, environ={}).sampler)
    assert isinstance(sampler, RuleBasedSampler)
    rng = random.Random(7)
    for _ in range(2000):
        trace_id = rng.getrandbits(128)
        name, attrs = rng.choice([("GET", {"url.path": "/health"}), ("GET", {"url.path": "/kv/a"}),
                                  ("GET", {"url.path": "/debug/traces"}), ("kv.put", {})])
        full = sampler.should_sample(None, trace_id, name, SpanKind.SERVER, attrs)
        assert sampler.sampled(None, trace_id, name, attrs) == (full.decision is Decision.RECORD_AND_SAMPLE)
    for flags in (TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)):
        parent = SpanContext(1, 2, is_remote=True, trace_flags=flags)
        full = sampler.should_sample(trace.set_span_in_context(NonRecordingSpan(parent)), 1, "GET",
                                     SpanKind.SERVER, {"url.path": "/health"})
        assert sampler.sampled(parent, 1, "GET", {"url.path": "/health"}) == (
            full.decision is Decision.RECORD_AND_SAMPLE)
