"""make_engine(settings): the engine `Settings.engine_kind` names, built for one node."""

from __future__ import annotations

import random

from opentelemetry import trace

from server.cluster.transport import Transport
from server.engine.base import Engine
from server.engine.memory import MemoryEngine
from server.engine.mesh import MeshEngine
from server.errors import ConfigError
from server.settings import Settings
from tracing.metrics import Metrics


def make_engine(settings: Settings, *, name: str, http_url: str, tracer: trace.Tracer,
                metrics: Metrics | None = None, transport: Transport | None = None,
                rng: random.Random | None = None) -> Engine:
    kind = settings.engine_kind
    if kind == "memory":
        return MemoryEngine(settings, name=name, http_url=http_url, tracer=tracer, metrics=metrics)
    if kind == "mesh":
        return MeshEngine(settings, name=name, http_url=http_url, tracer=tracer, metrics=metrics,
                          transport=transport, rng=rng)
    if kind == "valkey":
        try:
            from server.engine.valkey.engine import ValkeyEngine
        except ModuleNotFoundError as exc:  # the client library is the `valkey` extra
            if exc.name != "coredis" and not (exc.name or "").startswith("coredis."):
                raise
            raise ConfigError(f"engine = \"valkey\" needs the valkey extra "
                              f"(pip install 'webserver[valkey]'): {exc}") from None
        return ValkeyEngine(settings, name=name, http_url=http_url, tracer=tracer, metrics=metrics)
    raise ConfigError(f"engine: unknown engine {kind!r}")
