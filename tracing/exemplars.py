"""Which instruments keep exemplars, and how.

The two duration histograms a trace is looked up from (HTTP requests and chat
broadcasts) keep the latest sampled measurement per bucket, and keep it across
collections: the node's one reader is collected by Prometheus scrapes as well as
by the OTLP push (tracing/metrics_export.py), and the SDK's reservoirs reset on
every collection, so a scrape (whose text format drops exemplars) would take the
push's. Every other synchronous instrument keeps none: a KV operation's trace is
already reachable from its request's or message's exemplar, and each offer costs
the hot path a few microseconds.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Counter
from opentelemetry.sdk.metrics import Exemplar, ExemplarReservoir
from opentelemetry.sdk.metrics.view import View

EXEMPLAR_HISTOGRAMS = ("http.server.request.duration", "webserver.chat.broadcast.duration")
PLAIN_HISTOGRAMS = ("webserver.kv.operation.duration", "webserver.chat.recipients")


class LatestPerBucket(ExemplarReservoir):
    """The last measurement offered in each histogram bucket, with its span."""

    def __init__(self, boundaries: Sequence[float], **kwargs: Any) -> None:
        self._boundaries = list(boundaries)
        # bucket -> (value, time, attributes, span id, trace id); replaced whole, so
        # a collection on another thread never sees half an exemplar.
        self._latest: dict[int, tuple[float, int, Any, int, int]] = {}

    def offer(self, value: float, time_unix_nano: int, attributes: Any, context: Context) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            self._latest[bisect_left(self._boundaries, value)] = (
                value, time_unix_nano, attributes, span_context.span_id, span_context.trace_id)

    def collect(self, point_attributes: Any) -> list[Exemplar]:
        out = []
        for value, time_unix_nano, attributes, span_id, trace_id in list(self._latest.values()):
            extra = {k: v for k, v in attributes.items() if k not in point_attributes} if attributes else {}
            out.append(Exemplar(extra or None, value, time_unix_nano, span_id, trace_id))
        return out


class NoExemplars(ExemplarReservoir):
    def __init__(self, **kwargs: Any) -> None:
        pass

    def offer(self, value: float, time_unix_nano: int, attributes: Any, context: Context) -> None:
        pass

    def collect(self, point_attributes: Any) -> list[Exemplar]:
        return []


def _latest(aggregation: type) -> Callable[..., ExemplarReservoir]:
    return LatestPerBucket


def _none(aggregation: type) -> Callable[..., ExemplarReservoir]:
    return NoExemplars


def exemplar_views() -> list[View]:
    """Views that give each synchronous instrument its reservoir (see the module docstring)."""
    return [*(View(instrument_name=name, exemplar_reservoir_factory=_latest) for name in EXEMPLAR_HISTOGRAMS),
            *(View(instrument_name=name, exemplar_reservoir_factory=_none) for name in PLAIN_HISTOGRAMS),
            View(instrument_type=Counter, exemplar_reservoir_factory=_none)]
