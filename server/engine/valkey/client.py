"""The node's connection to Valkey/Redis (coredis: anyio-native, so it runs under Trio
with structured concurrency), in one of three modes: a standalone server, a
Cluster (seed nodes; sharded pub/sub) or a primary found through Sentinel.

`run()` holds the client open for the node's life and reconnects with backoff;
the node serves from the start, engine or not. Every call goes through `call()`:
a deadline (`valkey_timeout`), a CLIENT span after the database semantic
conventions, and errors mapped to what the front ends answer: unreachable or
slow -> EngineDown (503), out of memory -> StoreFull (507). The first failure is
logged once as a warning, the recovery once as info; nothing in between.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, nullcontext
from typing import Any, TypeVar

import anyio
import coredis
import coredis.exceptions as redis_errors
import trio
from coredis.connection import TCPLocation
from opentelemetry import trace

from server.cluster.links import backoff_delays
from server.engine.valkey.url import parse_url
from server.errors import EngineDown, StoreFull
from server.settings import Settings
from tracing.db import DbTarget, db_client_span

log = logging.getLogger(__name__)
T = TypeVar("T")
Client = coredis.Redis[str] | coredis.RedisCluster[str]

# Failures that mean "the server is not there right now" (rather than "you asked wrong").
_UNREACHABLE = (redis_errors.ConnectionError, redis_errors.ClusterDownError,
                redis_errors.BusyLoadingError, redis_errors.TryAgainError,
                redis_errors.PrimaryNotFoundError, redis_errors.ReadOnlyError, TimeoutError, OSError)


class ValkeyClient:
    def __init__(self, settings: Settings, tracer: trace.Tracer, *, node_name: str) -> None:
        self.mode = settings.valkey_mode
        self.urls = [parse_url(u) for u in settings.valkey_urls]
        self.sentinel_service = settings.valkey_sentinel_service
        self.timeout = settings.valkey_timeout
        self.tracer = tracer
        self.node_name = node_name
        first = self.urls[0]
        self.target = DbTarget("valkey", first.host, first.port,
                               str(first.db) if self.mode != "cluster" else None)
        self.redis: Client | None = None
        self.connected = trio.Event()  # set once, at the first connection
        self._healthy = True
        self._last_error = "not connected yet"
        self._reconnect_max = settings.reconnect_max_backoff
        self._session_tasks: list[Callable[[Client], Awaitable[None]]] = []

    @property
    def cluster(self) -> bool:
        return self.mode == "cluster"

    def describe(self) -> str:
        """Where the engine is, for messages (never the password)."""
        where = ", ".join(u.address for u in self.urls)
        return {"cluster": f"Valkey cluster at {where}",
                "sentinel": f"Valkey primary {self.sentinel_service!r} via sentinels {where}"
                }.get(self.mode, f"Valkey at {where}")

    # -- the connection's life ----------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # the node serves at once; calls answer 503 until connected
        delays = backoff_delays(0.1, self._reconnect_max)
        while True:
            try:
                async with self._open() as client:
                    with trio.fail_after(self.timeout):
                        info = await client.info("server")
                    if "valkey_version" not in info and info.get("server_name") != "valkey":
                        self.target = DbTarget("redis", self.target.address, self.target.port,
                                               self.target.namespace)
                    self.redis = client
                    self.connected.set()
                    self.healthy()
                    delays = backoff_delays(0.1, self._reconnect_max)
                    # coredis reconnects by itself from here on; tasks that hold
                    # connections of their own (subscriptions) end before the client.
                    async with trio.open_nursery() as tasks:
                        for task in self._session_tasks:
                            tasks.start_soon(task, client)
            except* (redis_errors.RedisError, OSError, trio.TooSlowError, anyio.ClosedResourceError,
                     anyio.BrokenResourceError) as group:
                self.unhealthy(group.exceptions[0])
            finally:
                self.redis = None
            await trio.sleep(next(delays))

    def while_connected(self, task: Callable[[Client], Awaitable[None]]) -> None:
        """Run task(client) inside the client's lifetime (register before run())."""
        self._session_tasks.append(task)

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Client]:
        first = self.urls[0]
        common: dict[str, Any] = {"username": first.username, "password": first.password,
                                  "decode_responses": True,
                                  "stream_timeout": self.timeout, "connect_timeout": self.timeout}
        if first.tls:  # only when asked: Sentinel-managed connections take no `ssl` at all
            common["ssl"] = True
        if self.mode == "cluster":
            nodes = [TCPLocation(u.host, u.port) for u in self.urls]
            async with coredis.RedisCluster(startup_nodes=nodes, **common) as cluster:
                yield cluster
        elif self.mode == "sentinel":
            sentinels = [TCPLocation(u.host, u.port) for u in self.urls]
            async with coredis.Sentinel(sentinels=sentinels, decode_responses=True,
                                        sentinel_kwargs={"connect_timeout": self.timeout,
                                                         "stream_timeout": self.timeout},
                                        **{k: v for k, v in common.items() if k != "decode_responses"}
                                        ) as sentinel:
                primary = sentinel.primary_for(self.sentinel_service, db=first.db)
                async with primary:
                    yield primary  # type: ignore[misc]
        else:
            async with coredis.Redis(first.host, first.port, db=first.db, **common) as client:
                yield client

    def healthy(self) -> None:
        if not self._healthy:
            log.info("valkey engine: %s answers again", self.describe())
        self._healthy = True

    def unhealthy(self, exc: BaseException) -> None:
        if trio.current_effective_deadline() == -math.inf:
            return  # shutting down: connections closing under us are no news
        self._last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
        if self._healthy:
            log.warning("valkey engine: %s unreachable (%s); KV answers 503 and chat reaches only "
                        "this node's members until it is back; retrying with backoff",
                        self.describe(), self._last_error)
        self._healthy = False

    @property
    def is_healthy(self) -> bool:
        return self.redis is not None and self._healthy

    # -- calls ------------------------------------------------------------------------
    async def call(self, operation: str, fn: Callable[[Client], Awaitable[T]], *,
                   batch_size: int | None = None, traced: bool = True) -> T:
        """fn(client) within the deadline, under a CLIENT span named operation."""
        client = self.redis
        if client is None:
            raise EngineDown(f"{self.describe()} is not connected ({self._last_error})")
        span = (db_client_span(self.tracer, self.target, operation, batch_size=batch_size)
                if traced else nullcontext())
        try:
            with span, trio.fail_after(self.timeout):
                result = await fn(client)
        except trio.TooSlowError:
            self.unhealthy(TimeoutError(f"no answer within {self.timeout:g}s"))
            raise EngineDown(f"{self.describe()} did not answer {operation} within {self.timeout:g}s "
                             "(valkey_timeout)") from None
        except _UNREACHABLE as exc:
            self.unhealthy(exc)
            raise EngineDown(f"{self.describe()} is unreachable: {str(exc)[:200]}") from None
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("OOM"):
                raise StoreFull(f"{self.describe()} is out of memory (maxmemory reached)") from None
            raise
        self.healthy()
        return result
