"""The cluster mesh: listens for peers on the cluster port, dials seeds and every
member it learns of, authenticates each link, keeps one link per peer, sends
heartbeats with gossip, marks silent peers down, and routes messages to the
handlers the node's services registered (kv.*, chat.*).

Everything long-lived runs in `run()`'s nursery. Membership changes are
announced to subscribers synchronously (they must not await), in the order
they happen.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import trio
from opentelemetry import trace
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    WebSocketRequest,
    wrap_client_stream,
    wrap_server_stream,
)

from server.cluster import auth, handshake
from server.cluster.links import (
    CLOSE_AUTH_FAILED,
    CLOSE_DUPLICATE,
    CLOSE_GOING_AWAY,
    CLOSE_SILENT,
    Handler,
    LinkError,
    PeerLink,
    backoff_delays,
)
from server.cluster.membership import Membership, Status
from server.cluster.protocol import REPLY, Message
from server.cluster.transport import PreAuthStream, TcpTransport, Transport, remote_address
from server.settings import Settings
from tracing import propagation
from tracing.cluster import end_link_span, link_span, record_failed_handshake
from tracing.metrics import Metrics

log = logging.getLogger(__name__)

HEARTBEAT = "heartbeat"
RESOURCE = "/cluster/v1"

_DIAL_FAILURES = (OSError, ConnectionClosed, HandshakeError, auth.AuthError, trio.TooSlowError)

# on_change(event, member name): event is "up", "down" or "removed"
MembershipListener = Callable[[str, str], None]


class Mesh:
    def __init__(self, settings: Settings, *, node_name: str, http_url: str,
                 transport: Transport | None = None, rng: random.Random | None = None,
                 metrics: Metrics | None = None, tracer: trace.Tracer | None = None) -> None:
        self.settings = settings
        self.name = node_name
        self.http_url = http_url
        self.transport: Transport = transport or TcpTransport()
        self.secret = settings.cluster_secret.encode()
        self.rng = rng or random.Random()
        self.membership = Membership(node_name, "", http_url)
        self.links: dict[str, PeerLink] = {}
        self.handlers: dict[str, Handler] = {HEARTBEAT: self._on_heartbeat}
        self.listeners: list[MembershipListener] = []
        self._dialing: set[str] = set()
        self._wake_dialer = trio.Event()
        self.address = ""
        self.metrics = metrics
        self.tracer = tracer or trace.NoOpTracer()
        self._linked_before: set[str] = set()
        if metrics is not None:
            metrics.observe("webserver.cluster.members", "{node}",
                            "Cluster members by status, self included.", self._member_counts)

    # -- what the node's services use ----------------------------------------
    def on(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def subscribe(self, listener: MembershipListener) -> None:
        self.listeners.append(listener)

    def up_peers(self) -> list[str]:
        return [n for n in self.membership.up_names() if n != self.name and n in self.links]

    def send(self, peer: str, kind: str, body: dict[str, Any]) -> bool:
        """Fire-and-forget with the current trace context; False when there is no link."""
        link = self.links.get(peer)
        return link is not None and link.send_nowait(Message(kind, body, trace=propagation.inject()))

    async def request(self, peer: str, kind: str, body: dict[str, Any],
                      within_s: float) -> dict[str, Any]:
        link = self.links.get(peer)
        if link is None:
            raise LinkError(f"no link to {peer}")
        reply = await link.request(Message(kind, body, trace=propagation.inject()), within_s)
        return reply.body

    # -- service ---------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the cluster port and keep the mesh; started() gives the bound address."""
        s = self.settings
        listener, bound = await self.transport.open_listener(s.cluster_bind)
        self.address = s.cluster_advertise or bound
        self.membership.self_address = self.address
        for peer in s.peer_addresses:
            self.membership.learn(peer)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._serve_connection, [listener])
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._dial_manager, nursery)
                log.info("cluster: %s listening for peers on %s", self.name, self.address)
                task_status.started(self.address)
        finally:
            for link in list(self.links.values()):
                link.close(CLOSE_GOING_AWAY, "node shutting down")

    # -- dialing ---------------------------------------------------------------
    def _targets(self) -> set[str]:
        linked = {m.cluster_address for n, m in self.membership.members.items() if n in self.links}
        wanted = set(self.membership.candidates)
        wanted |= {m.cluster_address for m in self.membership.members.values()}
        return wanted - linked - {self.address}

    async def _dial_manager(self, nursery: trio.Nursery) -> None:
        while True:
            for address in self._targets() - self._dialing:
                self._dialing.add(address)
                nursery.start_soon(self._dial_loop, address)
            with trio.move_on_after(self.settings.heartbeat_interval):
                await self._wake_dialer.wait()
            self._wake_dialer = trio.Event()

    async def _dial_loop(self, address: str) -> None:
        """Keep a link to `address` while it is wanted, with capped exponential backoff."""
        delays = backoff_delays(0.1, self.settings.reconnect_max_backoff)
        try:
            while address in self._targets():
                linked = False
                started = trio.current_time()
                try:
                    linked = await self._dial(address)
                except* _DIAL_FAILURES as group:
                    log.debug("cluster: dialing %s failed: %s", address, group.exceptions[0])
                if linked and trio.current_time() - started >= self.settings.heartbeat_interval:
                    # The link lived: redial at once and start the backoff over. A link that
                    # ended at once (e.g. the peer kept another one) counts as a failed dial.
                    delays = backoff_delays(0.1, self.settings.reconnect_max_backoff)
                else:
                    delay = next(delays)
                    await trio.sleep(delay * (0.5 + self.rng.random() / 2))
        finally:
            self._dialing.discard(address)

    async def _dial(self, address: str) -> bool:
        s = self.settings
        with trio.fail_after(s.handshake_timeout):
            stream = PreAuthStream(await self.transport.open_stream(address), auth.PRE_AUTH_STREAM_BYTES)
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(s.handshake_timeout):
                    host = address.rpartition(":")[0]
                    # trio-websocket is typed for socket streams but works over any Trio stream.
                    ws = await wrap_client_stream(nursery, stream, host, RESOURCE,  # type: ignore[arg-type]
                                                  message_queue_size=64,
                                                  max_message_size=s.cluster_max_message_bytes)
                    peer = await self._handshake_dialer(ws, stream, address)
            except BaseException:
                await stream.aclose()
                nursery.cancel_scope.cancel()
                raise
            if peer is None:
                nursery.cancel_scope.cancel()
                return False
            await self._serve_link(ws, peer, dialer=self.name)
            nursery.cancel_scope.cancel()
        return True

    async def _handshake_dialer(self, ws: WebSocketConnection, stream: PreAuthStream,
                                address: str) -> handshake.Peer | None:
        machine = handshake.DialerHandshake(
            self.secret, name=self.name, address=self.address, url=self.http_url, target=address,
            own_addresses=(self.address, self.settings.cluster_bind))
        try:
            return await _run_handshake(ws, stream, machine)
        except handshake.SelfDial as exc:
            if isinstance(exc, handshake.DuplicateName):
                log.warning("cluster: %s", exc)
            await ws.aclose(CLOSE_DUPLICATE, "that is this node")
            self.membership.candidates.discard(address)
            return None
        except handshake.WrongProof as exc:
            log.warning("cluster: %s at %s failed authentication (wrong cluster secret?)", exc.peer, address)
            record_failed_handshake(self.tracer, node=self.name, where=address, exc=exc, dialer=True)
            await ws.aclose(CLOSE_AUTH_FAILED, "authentication failed")
            raise
        except auth.FrameTooBig as exc:
            await ws.aclose(exc.close_code, str(exc))
            raise

    # -- accepting -------------------------------------------------------------
    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        """One inbound connection: WebSocket upgrade, handshake, then the link until it ends.
        trio.serve_listeners closes `stream` once this returns."""
        s = self.settings
        remote = remote_address(stream)  # read now: a closed connection no longer knows its peer
        guarded = PreAuthStream(stream, auth.PRE_AUTH_STREAM_BYTES)
        async with trio.open_nursery() as nursery:
            request: WebSocketRequest | None = None
            with trio.move_on_after(s.handshake_timeout):  # no upgrade request in time: just drop it
                request = await wrap_server_stream(nursery, guarded,
                                                   max_message_size=s.cluster_max_message_bytes)
            try:
                if request is not None:
                    await self._accept(await request.accept(), guarded, remote)
            except ConnectionClosed:
                log.debug("cluster: %s went away during the WebSocket upgrade", remote)
            finally:
                nursery.cancel_scope.cancel()

    async def _accept(self, ws: WebSocketConnection, stream: PreAuthStream, remote: str) -> None:
        try:
            with trio.fail_after(self.settings.handshake_timeout):
                peer = await self._handshake_listener(ws, stream)
        except (auth.AuthError, trio.TooSlowError, ConnectionClosed) as exc:
            reason = str(exc) or ("handshake timed out" if isinstance(exc, trio.TooSlowError)
                                  else type(exc).__name__)
            log.warning("cluster: refused a peer link from %s: %s", remote, reason)
            record_failed_handshake(self.tracer, node=self.name, where=remote, exc=exc, dialer=False)
            close = ((exc.close_code, str(exc)) if isinstance(exc, auth.FrameTooBig)
                     else (CLOSE_AUTH_FAILED, "authentication failed"))
            with trio.move_on_after(1):
                await ws.aclose(*close)
            return
        await self._serve_link(ws, peer, dialer=peer.name)

    async def _handshake_listener(self, ws: WebSocketConnection, stream: PreAuthStream) -> handshake.Peer:
        machine = handshake.ListenerHandshake(self.secret, name=self.name, url=self.http_url)
        return await _run_handshake(ws, stream, machine)

    # -- links -----------------------------------------------------------------
    async def _serve_link(self, ws: WebSocketConnection, remote: handshake.Peer, *, dialer: str) -> None:
        peer, address, url = remote.name, remote.address, remote.url
        link = PeerLink(ws, peer=peer, dialer=dialer, queue_size=self.settings.link_queue_size,
                        dispatch=self._dispatch, on_send=self._count_out)
        existing = self.links.get(peer)
        if existing is not None and not existing.closed.is_set():
            # Both sides dialed at once: keep the link dialed by the smaller name, on both ends.
            # The same dialer again has lost the old link (it only dials peers it has no link
            # to: it restarted, or the connection died without a FIN): the new link wins.
            if existing.dialer != dialer and min(existing.dialer, dialer) == existing.dialer:
                with trio.move_on_after(1):
                    await ws.aclose(CLOSE_DUPLICATE, "duplicate link")
                return
            existing.close(CLOSE_DUPLICATE, "duplicate link")
        self.links[peer] = link
        span = link_span(self.tracer, node=self.name, peer=peer, address=address, dialer=dialer)
        if peer in self._linked_before and self.metrics is not None:
            self.metrics.link_reconnects.add(1)
        self._linked_before.add(peer)
        if not self._seen(peer, address, url):
            # Already up: it restarted (or relinked) within failure_timeout. Listeners
            # still need to know, to resend room snapshots and hand keys off.
            self._announce("up", peer)
        link.send_nowait(self._heartbeat())  # gossip at once, not a heartbeat later
        try:
            await link.run()
        finally:
            if self.links.get(peer) is link:
                del self.links[peer]
            self._wake_dialer.set()
            code, reason, closed_by = link.close_info()
            end_link_span(span, code=code, reason=reason, closed_by=closed_by,
                          normal=code in (1000, CLOSE_GOING_AWAY, CLOSE_DUPLICATE))

    def _count_out(self, message: Message) -> None:
        # Requests and one-way messages, like the incoming side (replies are not dispatched).
        if self.metrics is not None and message.type != REPLY:
            self.metrics.link_messages.add(1, {"direction": "out", "message.type": message.type})

    def _member_counts(self) -> dict[tuple[tuple[str, str], ...], float]:
        up = len(self.membership.up_names())
        return {(("status", "up"),): up, (("status", "down"),): len(self.membership.members) + 1 - up}

    def _dispatch(self, link: PeerLink, message: Message) -> None:
        if self.metrics is not None:
            self.metrics.link_messages.add(1, {"direction": "in", "message.type": message.type})
        member = self.membership.members.get(link.peer)
        self._seen(link.peer, member.cluster_address if member else "", "")
        handler = self.handlers.get(message.type)
        if handler is None:
            link.reply(message, error=f"unknown message type {message.type!r}")
            return
        token = propagation.attach(message.trace)
        try:
            body = handler(link.peer, message)
        except Exception as exc:  # a handler bug must not take the link down
            log.exception("cluster: handling %s from %s failed", message.type, link.peer)
            link.reply(message, error=f"{type(exc).__name__}")
            return
        finally:
            propagation.detach(token)
        if message.id is not None:
            link.reply(message, body or {})

    def _seen(self, peer: str, address: str, url: str) -> bool:
        """Record a sign of life; True when that brought the member up (and announced it)."""
        if self.membership.seen(peer, address, url, trio.current_time(), time.time()):
            log.info("cluster: %s is up", peer)
            self._announce("up", peer)
            return True
        return False

    def _announce(self, event: str, peer: str) -> None:
        for listener in self.listeners:
            try:
                listener(event, peer)
            except Exception:
                log.exception("cluster: membership listener failed on %s %s", event, peer)

    # -- heartbeats ------------------------------------------------------------
    def _heartbeat(self) -> Message:
        return Message(HEARTBEAT, {"members": self.membership.gossip(), "url": self.http_url})

    def _on_heartbeat(self, peer: str, message: Message) -> None:
        members = message.body.get("members")
        learnt = False
        if isinstance(members, list):
            for m in members[:1000]:
                if isinstance(m, dict) and isinstance(m.get("address"), str) and m.get("name") != self.name:
                    if m.get("name") not in self.links:
                        learnt |= self.membership.learn(m["address"])
        if learnt:
            self._wake_dialer.set()
        return None

    async def _heartbeats(self) -> None:
        s = self.settings
        while True:
            await trio.sleep(s.heartbeat_interval)
            beat = self._heartbeat()
            for link in list(self.links.values()):
                link.send_nowait(beat)
            went_down, removed = self.membership.check(trio.current_time(), s.failure_timeout,
                                                       s.member_removal_timeout)
            for peer in went_down:
                log.warning("cluster: %s is down (silent for %.1fs)", peer, s.failure_timeout)
                if (silent := self.links.get(peer)) is not None:
                    silent.close(CLOSE_SILENT, "no heartbeat")
                self._announce("down", peer)
            for peer in removed:
                log.warning("cluster: %s removed after %.0fs down; its keys move to other replicas",
                            peer, s.member_removal_timeout)
                self._announce("removed", peer)
            if removed:
                self._wake_dialer.set()

    def describe(self) -> list[dict[str, object]]:
        """Every member with status, address and last-seen time; self first."""
        me: dict[str, object] = {"name": self.name, "status": Status.UP.value, "self": True,
                                 "cluster_address": self.address, "http_url": self.http_url,
                                 "last_seen": time.time()}
        return [me] + [m.to_json() for _, m in sorted(self.membership.members.items())]


async def _run_handshake(ws: WebSocketConnection, stream: PreAuthStream,
                         machine: handshake.Handshake) -> handshake.Peer:
    """Feed the peer's frames into the handshake until it is done; the caller bounds the time.

    The connection's message limit is cluster_max_message_bytes from the start (trio-websocket
    only takes it when the connection is made), so a pre-authentication frame is refused on its
    length once received (auth.FrameTooBig, 1009). What an unauthenticated peer can make this
    node buffer is bounded by `stream`'s byte budget, lifted once the peer has proved itself.
    """
    first = machine.start()
    if first is not None:
        await ws.send_message(first)
    while True:
        try:
            raw = await ws.get_message()
        except ConnectionClosed:
            if stream.exhausted:
                raise auth.AuthError(f"sent over {auth.PRE_AUTH_STREAM_BYTES} bytes before "
                                     "authenticating") from None
            raise
        step = machine.receive(raw)
        if step.authenticated:
            stream.lift()
        if step.send is not None:
            await ws.send_message(step.send)
        if step.peer is not None:
            return step.peer


__all__ = ["LinkError", "Mesh"]
