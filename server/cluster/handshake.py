"""The peer-link handshake as a pure state machine: no I/O, no trio.

The caller (mesh.py) moves frames between the WebSocket and a machine:

    machine = DialerHandshake(...)          # or ListenerHandshake(...)
    send(machine.start())                   # the dialer's hello; None for the listener
    while the handshake is not done:
        step = machine.receive(next frame)  # raises auth.AuthError on any failure
        step.authenticated -> the peer has proved it holds the secret: lift pre-auth limits
        step.send          -> the frame to send next, if any
        step.peer          -> set once the link is authenticated: who is on the other end

The exchange itself (frames, proofs, nonces) is described in auth.py. Every check
lives here or there: the expected frame type at each step, the pre-authentication
frame size, the proofs (constant time), and a dialer finding its own name on the
other end. Failures raise auth.AuthError (or a subclass saying how to close).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from server.cluster import auth


@dataclass(frozen=True)
class Peer:
    """The authenticated node at the other end of a link."""

    name: str
    address: str  # its cluster address: the one dialed, or the one it announced in hello
    url: str  # its public HTTP URL


@dataclass(frozen=True)
class Step:
    send: str | None = None  # frame to send now
    authenticated: bool = False  # the peer just proved it holds the secret
    peer: Peer | None = None  # the handshake is complete


class WrongProof(auth.AuthError):
    """The peer's proof does not match: it does not hold the cluster secret (or replayed one)."""

    def __init__(self, message: str, peer: str) -> None:
        super().__init__(message)
        self.peer = peer


class SelfDial(auth.AuthError):
    """The dialed node has this node's own name: the dialer dialed itself."""

    def __init__(self, address: str, name: str, message: str = "") -> None:
        super().__init__(message or f"the node at {address} is {name}: that is this node")
        self.address = address


class DuplicateName(SelfDial):
    """The dialed node has this node's name but not one of its addresses: a second node so named."""

    def __init__(self, address: str, name: str) -> None:
        super().__init__(address, name, f"the node at {address} is also named {name}; node names "
                                        "must be unique (set node_name)")


class _Machine:
    def __init__(self) -> None:
        self.done = False  # complete or failed: later frames belong to the link, or to nobody

    def receive(self, raw: str | bytes) -> Step:
        """Feed the next frame from the peer; raises auth.AuthError (and is then over)."""
        if self.done:
            raise RuntimeError("the handshake is over: frames belong to the link now")
        try:
            step = self._receive(raw)
        except auth.AuthError:
            self.done = True
            raise
        if step.peer is not None:
            self.done = True
        return step

    def _receive(self, raw: str | bytes) -> Step:
        raise NotImplementedError


class DialerHandshake(_Machine):
    """The side that opened the connection: hello, check the challenge, auth, await welcome."""

    def __init__(self, secret: bytes, *, name: str, address: str, url: str, target: str,
                 own_addresses: Collection[str] = (), nonce: str | None = None) -> None:
        super().__init__()
        self.secret = secret
        self.name = name
        self.address = address  # this node's advertised cluster address, sent in hello
        self.url = url
        self.target = target  # the address dialed
        self.own_addresses = own_addresses  # addresses that reach this very node
        self.nonce = nonce or auth.new_nonce()
        self._started = False
        self._challenge: dict[str, str] | None = None

    def start(self) -> str:
        if self._started:
            raise RuntimeError("hello was already sent")
        self._started = True
        return auth.frame("hello", node=self.name, nonce=self.nonce, address=self.address, url=self.url)

    def _receive(self, raw: str | bytes) -> Step:
        if not self._started:
            raise RuntimeError("start() first: the dialer speaks first")
        if self._challenge is None:
            return self._on_challenge(raw)
        auth.parse(raw, "welcome")
        got = self._challenge
        return Step(peer=Peer(got["node"], self.target, got["url"]))

    def _on_challenge(self, raw: str | bytes) -> Step:
        got = auth.parse(raw, "challenge", "node", "nonce", "proof", "url")
        peer = got["node"]
        if peer == self.name:
            if self.target in self.own_addresses:
                raise SelfDial(self.target, peer)
            raise DuplicateName(self.target, peer)
        # Check the listener's proof before giving away one of our own.
        expected = auth.proof(self.secret, "listener", self.nonce, got["nonce"], self.name, peer)
        if not auth.verify(expected, got["proof"]):
            raise WrongProof(f"{peer} at {self.target} sent a wrong proof (wrong cluster secret?)", peer)
        self._challenge = got
        mine = auth.proof(self.secret, "dialer", self.nonce, got["nonce"], self.name, peer)
        return Step(send=auth.frame("auth", proof=mine), authenticated=True)


class ListenerHandshake(_Machine):
    """The side that accepted the connection: await hello, challenge, check auth, welcome.

    Names are the dialer's to check: a node dialing its own address learns it from the
    challenge and hangs up quietly (4002), so the listener does not refuse (and log) it.
    """

    def __init__(self, secret: bytes, *, name: str, url: str, nonce: str | None = None) -> None:
        super().__init__()
        self.secret = secret
        self.name = name
        self.url = url
        self.nonce = nonce or auth.new_nonce()
        self._hello: dict[str, str] | None = None

    def start(self) -> str | None:
        """The listener waits for hello: nothing to send first (None)."""
        return None

    def _receive(self, raw: str | bytes) -> Step:
        if self._hello is None:
            hello = self._hello = auth.parse(raw, "hello", "node", "nonce", "address", "url")
            mine = auth.proof(self.secret, "listener", hello["nonce"], self.nonce, hello["node"], self.name)
            return Step(send=auth.frame("challenge", node=self.name, nonce=self.nonce, url=self.url,
                                        proof=mine))
        hello = self._hello
        peer = hello["node"]
        got = auth.parse(raw, "auth", "proof")
        expected = auth.proof(self.secret, "dialer", hello["nonce"], self.nonce, peer, self.name)
        if not auth.verify(expected, got["proof"]):
            raise WrongProof(f"{peer} sent a wrong proof (wrong cluster secret?)", peer)
        return Step(send=auth.frame("welcome"), authenticated=True,
                    peer=Peer(peer, hello["address"], hello["url"]))


Handshake = DialerHandshake | ListenerHandshake
