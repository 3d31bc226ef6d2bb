"""KV operations as the front ends call them: placement, quorums and the `kv.*` spans.

On a single node (no mesh) every operation is a dictionary access under one
span. In a cluster the node that takes the request coordinates: it places the
key on N replicas (server/kv/placement.py, over every member, up or down),
writes to all of them and succeeds at W acks, or reads from all and answers
with the newest of the first R answers, sending that version to any stale
answerer (read repair). Too few answers within cluster_request_timeout is a
503 (`Unavailable`), never a hang. Versions are hybrid-clock timestamps with
the writer's name as tie-break, so every replica keeps the same winner, and
deletes are tombstones that win over older writes.

Spans: the coordinator's `kv.put`/`kv.get`/`kv.delete` is the current span while
it asks its peers (kind CLIENT when any replica is remote), so each replica's
own `kv.put`/`kv.get` (kind SERVER, `kv.node` = that replica) is its child in
the same trace. Values never go into attributes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from server.cluster.links import LinkError
from server.engine.base import Read
from server.errors import StoreFull, Unavailable
from server.kv.placement import replicas_for
from server.kv.store import Entry, Store, Version, entry_from_json, entry_to_json, version_from_json
from tracing import spans as S
from tracing.kv_span import KVSpan

if TYPE_CHECKING:
    from server.cluster.mesh import Mesh
    from tracing.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")

KV_WRITE = "kv.write"  # cluster message: apply this entry (put or tombstone)
KV_READ = "kv.read"  # cluster message: send me your entry for key
KV_SYNC = "kv.sync"  # cluster message: merge these entries (repair, handoff)
SYNC_BATCH = 200


MAX_RESTAMPS = 3


@dataclass(frozen=True)
class Applied:
    """What applying a write did on one replica."""

    had_live: bool  # a live value was there before
    newer: Version | None  # the replica kept its own, newer version instead


class ReplicaFull(LinkError):
    """A replica refused a write because its store is at max_keys."""


class KV:
    def __init__(self, store: Store, tracer: trace.Tracer, *, replicas: int = 3, write_quorum: int = 2,
                 read_quorum: int = 2, request_timeout: float = 2.0,
                 anti_entropy_interval: float = 0.0, metrics: Metrics | None = None) -> None:
        self.store = store
        self.tracer = tracer
        self.replicas = replicas
        self.write_quorum = write_quorum
        self.read_quorum = read_quorum
        self.request_timeout = request_timeout
        self.anti_entropy_interval = anti_entropy_interval
        self.metrics = metrics
        self.mesh: Mesh | None = None
        self._handoff_send, self._handoff_receive = trio.open_memory_channel[frozenset[str] | None](64)

    @property
    def node_name(self) -> str:
        return self.store.node_name

    # -- the operations ------------------------------------------------------
    async def get(self, key: str) -> Read:
        if self.mesh is None:  # a single node: a dictionary access
            with self._span(S.KV_GET, key, SpanKind.INTERNAL, current=False) as span:
                entry = self.store.get(key)
                span.found(entry is not None)
                return Read(entry, self.node_name)
        replicas = self._placement(key)
        need = self.read_quorum
        with self._span(S.KV_GET, key, _kind(replicas, self.node_name), replicas, need) as span:
            answers, _ = await self._gather(replicas, need, lambda: self.store.entry(key),
                                            lambda peer: self._ask_read(peer, key))
            span.set_attribute(S.KV_ACKS, len(answers))
            if len(answers) < need:
                raise Unavailable(f"only {len(answers)} of the {need} replicas a read needs answered "
                                  f"within {self.request_timeout:g}s (replicas: {', '.join(replicas)})")
            source, newest = _newest(answers)
            stale = [] if newest is None else [
                p for p, e in answers.items() if e is None or e.version < newest.version]
            for peer in stale:  # read repair, fire and forget
                self._repair(peer, newest)  # type: ignore[arg-type]
            span.set_attribute(S.KV_REPAIRED, len(stale))
            live = newest if newest is not None and not newest.deleted else None
            span.found(live is not None)
            return Read(live, source if live is not None else self.node_name)

    async def put(self, key: str, value: Any) -> Entry:
        if self.mesh is None:
            with self._span(S.KV_PUT, key, SpanKind.INTERNAL, current=False):
                return self.store.put(key, value)
        written, _ = await self._write(S.KV_PUT, self.store.new_entry(key, value))
        return written

    async def delete(self, key: str) -> bool:
        """Write a tombstone; True when some replica held a live value."""
        if self.mesh is None:  # nothing to outlive: no tombstone for a key never there
            with self._span(S.KV_DELETE, key, SpanKind.INTERNAL, current=False) as span:
                found = self.store.delete(key) is not None
                span.found(found)
                return found
        # In a cluster the tombstone is written even if this node never saw the key:
        # a replica it cannot see may hold a value the delete must beat.
        _, found = await self._write(S.KV_DELETE, self.store.new_entry(key, None, deleted=True))
        return found

    async def _write(self, name: str, entry: Entry) -> tuple[Entry, bool]:
        """Apply entry on its replicas; returns the entry written (maybe re-stamped) and
        whether any replica had a live value before."""
        replicas = self._placement(entry.key)
        need = self.write_quorum
        kind = _kind(replicas, self.node_name)
        with self._span(name, entry.key, kind, replicas, need) as span:
            for attempt in range(MAX_RESTAMPS + 1):
                wire = entry_to_json(entry)
                answers, failures = await self._gather(
                    replicas, need, lambda entry=entry: self._apply(entry),  # type: ignore[misc]
                    lambda peer, wire=wire: self._ask_write(peer, wire))  # type: ignore[misc]
                newer = [a.newer for a in answers.values() if a.newer is not None]
                if not newer or attempt == MAX_RESTAMPS:
                    break
                # A replica holds a newer version than this one: stamped by a node whose
                # clock runs ahead, maybe for a write acknowledged before this one began.
                # Stamp again past it, so a write that starts after another one finished
                # always wins; a write concurrent with this one may then lose to it.
                self.store.clock.observe(max(newer).timestamp)
                entry = self.store.new_entry(entry.key, entry.value, deleted=entry.deleted)
            # Every answer is an ack: a replica that kept a newer version stored this
            # write and let a concurrent one win over it (last writer wins), which is
            # the promise; only replicas that did not answer are missing.
            acks = len(answers)
            span.set_attribute(S.KV_ACKS, acks)
            superseded = sum(a.newer is not None for a in answers.values())
            if superseded:
                span.set_attribute(S.KV_SUPERSEDED, superseded)
            found = any(a.had_live for a in answers.values())
            if entry.deleted:
                span.found(found)
            if acks < need:
                full = [p for p, exc in failures.items() if isinstance(exc, ReplicaFull)]
                if full:
                    raise StoreFull(f"the store of replica {', '.join(full)} holds its limit of keys")
                raise Unavailable(f"only {acks} of the {need} replica acks a write needs arrived "
                                  f"within {self.request_timeout:g}s (replicas: {', '.join(replicas)}); "
                                  "the write may still reach some replicas")
            return entry, found

    def _apply(self, entry: Entry) -> Applied:
        """Merge locally: whether a live value was there, and any newer version kept."""
        current = self.store.entry(entry.key)
        self.store.merge(entry)
        newer = current.version if current is not None and current.version > entry.version else None
        return Applied(current is not None and not current.deleted, newer)

    # -- fan-out with a quorum and a deadline ---------------------------------
    def _placement(self, key: str) -> list[str]:
        # Over every member, up or down (see server/cluster/membership.py): a node
        # that cannot reach W of a key's replicas answers 503, even if it is alone.
        if self.mesh is None:
            return [self.node_name]
        return replicas_for(key, self.mesh.membership.placement_names(), self.replicas)

    async def _gather(self, replicas: list[str], need: int, local: Callable[[], T],
                      ask: Callable[[str], Awaitable[T]]) -> tuple[dict[str, T], dict[str, LinkError]]:
        """Answers from replicas (local first, then remote ones) until `need` or the
        deadline, and why the replicas that failed did."""
        answers: dict[str, T] = {}
        failed: dict[str, LinkError] = {}
        enough = trio.Event()

        def settle() -> None:
            if len(answers) >= need or len(answers) + len(failed) >= len(replicas):
                enough.set()

        if self.node_name in replicas:
            answers[self.node_name] = local()  # StoreFull propagates: 507
        settle()

        async def one(peer: str) -> None:
            try:
                answers[peer] = await ask(peer)
            except LinkError as exc:
                log.debug("kv: %s did not answer: %s", peer, exc)
                failed[peer] = exc
                # On the kv span (current in this task too): which replica failed and why.
                trace.get_current_span().add_event(S.CLUSTER_REQUEST_FAILED, {
                    S.KV_PEER: peer, S.ERROR_TYPE: type(exc).__name__,
                    S.EXCEPTION_MESSAGE: str(exc)[:200]})
            settle()

        async with trio.open_nursery() as nursery:
            for peer in replicas:
                if peer != self.node_name:
                    nursery.start_soon(one, peer)
            with trio.move_on_after(self.request_timeout):
                await enough.wait()
            nursery.cancel_scope.cancel()
        return answers, failed

    async def _ask_read(self, peer: str, key: str) -> Entry | None:
        assert self.mesh is not None
        body = await self.mesh.request(peer, KV_READ, {"key": key}, self.request_timeout)
        raw = body.get("entry")
        return entry_from_json(raw) if raw is not None else None

    async def _ask_write(self, peer: str, wire: dict[str, Any]) -> Applied:
        assert self.mesh is not None
        body = await self.mesh.request(peer, KV_WRITE, {"entry": wire}, self.request_timeout)
        if body.get("store_full"):
            raise ReplicaFull(f"{peer}'s store is full")
        newer = body.get("newer")
        return Applied(bool(body.get("had_live")), version_from_json(newer) if newer is not None else None)

    def _repair(self, peer: str, entry: Entry) -> None:
        if peer == self.node_name:
            self.store.merge(entry)
        elif self.mesh is not None:
            self.mesh.send(peer, KV_SYNC, {"entries": [entry_to_json(entry)]})

    # -- what peers ask of this node ------------------------------------------
    def attach(self, mesh: Mesh) -> None:
        self.mesh = mesh
        mesh.on(KV_WRITE, self._on_write)
        mesh.on(KV_READ, self._on_read)
        mesh.on(KV_SYNC, self._on_sync)
        mesh.subscribe(self._on_membership)

    def _on_write(self, peer: str, message: Any) -> dict[str, Any]:
        entry = entry_from_json(message.body.get("entry"))
        name = S.KV_DELETE if entry.deleted else S.KV_PUT
        with self._span(name, entry.key, SpanKind.SERVER):
            try:
                applied = self._apply(entry)
            except StoreFull:
                return {"store_full": True}
            reply: dict[str, Any] = {"had_live": applied.had_live}
            if applied.newer is not None:
                reply["newer"] = applied.newer.to_json()
            return reply

    def _on_read(self, peer: str, message: Any) -> dict[str, Any]:
        key = message.body.get("key")
        if not isinstance(key, str):
            raise ValueError("kv.read: key must be a string")
        with self._span(S.KV_GET, key, SpanKind.SERVER) as span:
            entry = self.store.entry(key)
            span.found(entry is not None and not entry.deleted)
            return {"entry": entry_to_json(entry) if entry is not None else None}

    def _on_sync(self, peer: str, message: Any) -> dict[str, Any]:
        entries = message.body.get("entries")
        if not isinstance(entries, list):
            raise ValueError("kv.sync: entries must be a list")
        changed = full = 0
        for raw in entries:
            try:
                changed += self.store.merge(entry_from_json(raw))
            except StoreFull:
                full += 1  # counted, not fatal: the rest of the batch still merges
        if full:
            log.warning("kv: store full, %d synced entries from %s not kept", full, peer)
        return {"changed": changed, "refused": full}

    # -- hand-off: restore the replica count when membership changes ----------
    def _on_membership(self, event: str, peer: str) -> None:
        # A member up (new or back): it may be missing keys it replicates. A member
        # removed: placement moved, so every peer may have new keys to hold.
        target = frozenset({peer}) if event == "up" else (None if event == "removed" else frozenset())
        if target == frozenset():
            return
        try:
            self._handoff_send.send_nowait(target)
        except trio.WouldBlock:
            pass  # a pass is already queued; the next one covers this change too

    async def run_handoff(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand-off passes on membership changes, and a full pass (anti-entropy) every
        anti_entropy_interval: replicas that missed writes while unreachable, with no
        membership change and no read to repair them, still catch up."""
        task_status.started()
        interval = self.anti_entropy_interval or math.inf
        async with self._handoff_receive:
            while True:
                target: frozenset[str] | None = None  # None: every peer
                with trio.move_on_after(interval):
                    target = await self._handoff_receive.receive()
                await trio.sleep(0.2)  # let a burst of membership changes settle into one pass
                targets: set[str] | None = set(target) if target is not None else None
                while True:  # fold queued passes into this one
                    try:
                        more = self._handoff_receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    targets = None if targets is None or more is None else targets | more
                await self._handoff(targets)

    async def _handoff(self, targets: set[str] | None) -> None:
        """Send every local entry (tombstones too) to its replicas among targets (None: all)."""
        mesh = self.mesh
        if mesh is None:
            return
        members = mesh.membership.placement_names()
        batches: dict[str, list[dict[str, Any]]] = {}
        for entry in self.store.entries():
            for peer in replicas_for(entry.key, members, self.replicas):
                if peer != self.node_name and (targets is None or peer in targets):
                    batches.setdefault(peer, []).append(entry_to_json(entry))
        for peer, entries in batches.items():
            with self.tracer.start_as_current_span(S.KV_HANDOFF, attributes={
                    S.KV_NODE: self.node_name, S.KV_PEER: peer, S.KV_KEYS: len(entries)}):
                for start in range(0, len(entries), SYNC_BATCH):
                    try:
                        await mesh.request(peer, KV_SYNC, {"entries": entries[start:start + SYNC_BATCH]},
                                           self.request_timeout)
                    except LinkError as exc:  # the next membership change retries
                        log.info("kv: hand-off to %s stopped: %s", peer, exc)
                        break

    # -- spans -------------------------------------------------------------------
    def _span(self, name: str, key: str, kind: SpanKind, replicas: list[str] | None = None,
              need: int | None = None, *, current: bool = True) -> KVSpan:
        attrs: dict[str, Any] = {S.KV_KEY: S.clip(key), S.KV_NODE: self.node_name}
        if replicas is not None:
            attrs[S.KV_REPLICAS] = len(replicas)
            attrs[S.KV_QUORUM] = need or 0
        # The metric counts operations clients asked for, not each replica's share.
        metrics = self.metrics if kind is not SpanKind.SERVER else None
        return KVSpan(self.tracer.start_span(name, kind=kind, attributes=attrs), current,
                       name.removeprefix("kv."), metrics)


def _kind(replicas: list[str], me: str) -> SpanKind:
    return SpanKind.CLIENT if any(p != me for p in replicas) else SpanKind.INTERNAL


def _newest(answers: dict[str, Entry | None]) -> tuple[str, Entry | None]:
    source, newest = "", None
    for peer, entry in answers.items():
        if entry is not None and (newest is None or entry.version > newest.version):
            source, newest = peer, entry
    return source, newest
