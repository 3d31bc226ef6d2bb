"""Spans of one WebSocket connection.

- `WS /ws` (SERVER): the connection's lifetime, from accept to close; carries
  `websocket.peer`, `websocket.connection_id` and, at the end, `websocket.duration_ms`.
- `websocket.connect` / `websocket.disconnect` (INTERNAL): children of it.
- `websocket.message` (SERVER): one per client frame, the root of its own trace,
  linked to the lifetime span. A long-lived connection would otherwise make one
  endless trace that Tempo cannot show until the client leaves; this way each
  message (and the `kv.*` / `chat.broadcast` spans it causes) is a small,
  complete trace, and the link leads back to the connection.

A client leaving is a normal end: status stays unset. Only a server fault sets ERROR.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Link, Span, SpanKind

from tracing import spans as S

PROTOCOL_ERROR_CODES = {1003: "unsupported_data", 1008: "policy_violation", 1009: "message_too_big"}


def request_refused(span: Span, code: str, message: str) -> None:
    """A client request the server answered with an error frame (a 4xx-like refusal)."""
    span.add_event(S.WS_REQUEST_REFUSED, {S.ERROR_TYPE: code, S.EXCEPTION_MESSAGE: S.clip(message)})


class ConnectionSpans:
    # Lives as long as its connection: slots, and the span's context, link and common
    # attributes made when used rather than kept (issue 13: memory per idle WebSocket).
    __slots__ = ("_started", "connection_id", "peer", "span", "tracer")

    def __init__(self, tracer: trace.Tracer, *, peer: str, connection_id: str,
                 headers: Mapping[str, str], attributes: Mapping[str, str | int]) -> None:
        self.tracer = tracer
        self.peer = peer  # strings the Connection holds anyway: no dict of them kept
        self.connection_id = connection_id
        self._started = time.monotonic()
        self.span: Span = tracer.start_span(
            S.WS_CONNECTION, context=extract(headers), kind=SpanKind.SERVER,
            attributes={**self._base(), S.HTTP_ROUTE: "/ws", **attributes})

    def _base(self) -> dict[str, str | int]:
        """The attributes every span of the connection carries."""
        return {S.WS_PEER: self.peer, S.WS_CONNECTION_ID: self.connection_id}

    def _context(self) -> otel_context.Context:
        return trace.set_span_in_context(self.span)

    def duration_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def connected(self) -> None:
        self.tracer.start_span(S.WS_CONNECT, context=self._context(), attributes=self._base()).end()

    @contextmanager
    def message(self, message_type: str, size: int) -> Iterator[Span]:
        """The span of one client frame, current while it is handled."""
        span = self.tracer.start_span(
            S.WS_MESSAGE, context=otel_context.Context(), kind=SpanKind.SERVER,
            links=[Link(self.span.get_span_context())],
            attributes={S.WS_MESSAGE_TYPE: message_type, S.WS_MESSAGE_SIZE: size,
                        S.WS_CONNECTION_ID: self.connection_id})
        with trace.use_span(span, end_on_exit=True, record_exception=False,
                            set_status_on_exception=False):
            try:
                yield span
            except Exception as exc:
                S.fail(span, exc)
                raise

    def closed(self, close_code: int | None, error: BaseException | None = None,
               reason: str | None = None) -> None:
        """End the connection: the disconnect span, then the lifetime span.

        close_code is the code the server closed with, None when the client left. A
        close for the client's misbehaviour (1003, 1008, 1009) is recorded as an
        event with the reason; it stays a client error, so the status stays unset.
        """
        if close_code in PROTOCOL_ERROR_CODES:
            self.span.add_event(S.WS_PROTOCOL_ERROR, {
                S.WS_CLOSE_CODE: close_code, S.ERROR_TYPE: PROTOCOL_ERROR_CODES[close_code],
                S.EXCEPTION_MESSAGE: S.clip(reason or "")})
        duration = self.duration_ms()
        attrs = {**self._base(), S.WS_DURATION_MS: duration,
                 S.WS_CLOSED_BY: "client" if close_code is None else "server"}
        if close_code is not None:
            attrs[S.WS_CLOSE_CODE] = close_code
        self.tracer.start_span(S.WS_DISCONNECT, context=self._context(), attributes=attrs).end()
        self.span.set_attributes(attrs)
        if error is not None:
            S.fail(self.span, error)
        self.span.end()

