"""The peer-link handshake state machines (server/cluster/handshake.py), driven
against each other and against hand-made frames: no sockets, no trio."""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest

from server.cluster import auth
from server.cluster.handshake import (
    DialerHandshake,
    DuplicateName,
    ListenerHandshake,
    Peer,
    SelfDial,
    Step,
    WrongProof,
)

SECRET = b"s" * 32
OTHER_SECRET = b"t" * 32


def dialer(secret: bytes = SECRET, *, name: str = "n1", target: str = "n2:7000",
           **kw: Any) -> DialerHandshake:
    return DialerHandshake(secret, name=name, address=f"{name}:7000", url=f"http://{name}", target=target,
                           own_addresses=(f"{name}:7000", "0.0.0.0:7000"), **kw)


def listener(secret: bytes = SECRET, *, name: str = "n2", **kw: Any) -> ListenerHandshake:
    return ListenerHandshake(secret, name=name, url=f"http://{name}", **kw)


def run(d: DialerHandshake, lst: ListenerHandshake) -> tuple[Peer, Peer, list[str]]:
    """Pump frames between the two machines; returns what each learnt and the frames sent."""
    assert lst.start() is None  # the dialer speaks first
    wire = [d.start()]
    d_peer = l_peer = None
    while d_peer is None or l_peer is None:
        step = lst.receive(wire[-1])
        assert step.send is not None
        wire.append(step.send)
        l_peer = step.peer
        step = d.receive(wire[-1])
        d_peer = step.peer
        if step.send is not None:
            wire.append(step.send)
    return d_peer, l_peer, wire


def kinds(wire: list[str]) -> list[str]:
    return [json.loads(raw)["type"] for raw in wire]


# -- success -----------------------------------------------------------------------------


def test_both_sides_learn_who_is_at_the_other_end() -> None:
    d, lst = dialer(), listener()
    d_peer, l_peer, wire = run(d, lst)
    assert d_peer == Peer("n2", "n2:7000", "http://n2")  # the address dialed
    assert l_peer == Peer("n1", "n1:7000", "http://n1")  # the address announced in hello
    assert kinds(wire) == ["hello", "challenge", "auth", "welcome"]
    assert d.done and lst.done
    assert all(len(raw) <= auth.PRE_AUTH_MAX_BYTES for raw in wire)
    assert SECRET.decode() not in "".join(wire)


def test_each_side_reports_the_peer_authenticated_once_its_proof_checks_out() -> None:
    d, lst = dialer(), listener()
    challenge = lst.receive(d.start())
    assert challenge == Step(send=challenge.send)  # hello proves nothing yet
    assert challenge.send is not None
    auth_step = d.receive(challenge.send)
    assert auth_step.authenticated and auth_step.peer is None and auth_step.send is not None
    welcome = lst.receive(auth_step.send)
    assert welcome.authenticated and welcome.peer is not None and welcome.send == auth.frame("welcome")
    assert d.receive(welcome.send) == Step(peer=Peer("n2", "n2:7000", "http://n2"))


def test_frames_after_the_handshake_are_not_the_machines_business() -> None:
    d, lst = dialer(), listener()
    run(d, lst)
    with pytest.raises(RuntimeError):
        d.receive(auth.frame("welcome"))
    with pytest.raises(RuntimeError):
        lst.receive(auth.frame("auth", proof="p"))
    with pytest.raises(RuntimeError):
        d.start()


# -- wrong secret ---------------------------------------------------------------------------


@pytest.mark.parametrize(("dialer_secret", "listener_secret"),
                         [(SECRET, OTHER_SECRET), (OTHER_SECRET, SECRET)],
                         ids=["listener-wrong", "dialer-wrong"])
def test_mismatched_secrets_fail_at_the_dialer_before_it_proves_anything(
        dialer_secret: bytes, listener_secret: bytes) -> None:
    d, lst = dialer(dialer_secret), listener(listener_secret)
    challenge = lst.receive(d.start())
    assert challenge.send is not None
    wrong = r"^n2 at n2:7000 sent a wrong proof \(wrong cluster secret\?\)$"
    with pytest.raises(WrongProof, match=wrong) as err:
        d.receive(challenge.send)
    assert err.value.peer == "n2" and isinstance(err.value, auth.AuthError)
    assert d.done
    with pytest.raises(RuntimeError):  # a failed machine stays failed
        d.receive(auth.frame("welcome"))


def _hello(name: str = "mallory", nonce: str | None = None) -> str:
    return auth.frame("hello", node=name, nonce=nonce or auth.new_nonce(), address=f"{name}:1",
                      url=f"http://{name}")


def test_listener_refuses_a_dialer_proof_made_with_another_secret() -> None:
    lst = listener()
    nonce = auth.new_nonce()
    challenge = json.loads(lst.receive(_hello(nonce=nonce)).send or "")
    forged = auth.proof(OTHER_SECRET, "dialer", nonce, challenge["nonce"], "mallory", "n2")
    with pytest.raises(WrongProof, match=r"^mallory sent a wrong proof \(wrong cluster secret\?\)$"):
        lst.receive(auth.frame("auth", proof=forged))
    assert lst.done


# -- replayed and forged proofs ---------------------------------------------------------------


def test_a_recorded_auth_frame_is_useless_against_a_fresh_challenge() -> None:
    _, _, wire = run(dialer(), listener())
    hello, _, recorded_auth, _ = wire
    replay = listener()  # a new connection: a fresh listener nonce
    replay.receive(hello)
    with pytest.raises(WrongProof, match="n1 sent a wrong proof"):
        replay.receive(recorded_auth)


def test_a_recorded_challenge_is_useless_against_a_fresh_hello() -> None:
    _, _, wire = run(dialer(), listener())
    fresh = dialer()
    fresh.start()
    with pytest.raises(WrongProof, match="n2 at n2:7000 sent a wrong proof"):
        fresh.receive(wire[1])


def test_the_listeners_own_proof_reflected_back_is_refused() -> None:
    lst = listener()
    challenge = json.loads(lst.receive(_hello()).send or "")
    with pytest.raises(WrongProof, match="mallory sent a wrong proof"):
        lst.receive(auth.frame("auth", proof=challenge["proof"]))


def test_a_proof_for_another_pair_of_nodes_is_refused() -> None:
    nonce = auth.new_nonce()
    lst = listener()
    challenge = json.loads(lst.receive(_hello("n1", nonce)).send or "")
    # right secret and nonces, but made for n1 -> n3: a proof does not transfer between pairs
    other_pair = auth.proof(SECRET, "dialer", nonce, challenge["nonce"], "n1", "n3")
    with pytest.raises(WrongProof):
        lst.receive(auth.frame("auth", proof=other_pair))


@pytest.mark.parametrize("proof", ["0" * 64, "", "x", "é" * 64, 12345])
def test_made_up_proofs_are_refused(proof: Any) -> None:
    lst = listener()
    lst.receive(_hello())
    raw = json.dumps({"v": 1, "type": "auth", "proof": proof})
    with pytest.raises(auth.AuthError):
        lst.receive(raw)
    d = dialer()
    d.start()
    raw = json.dumps({"v": 1, "type": "challenge", "node": "n2", "nonce": "ab" * 32, "url": "u",
                      "proof": proof})
    with pytest.raises(auth.AuthError):
        d.receive(raw)


def test_proofs_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    run(dialer(), listener())
    assert len(calls) == 2  # the dialer checks the challenge, the listener checks auth


def test_given_nonces_are_used_and_fresh_ones_differ() -> None:
    d = dialer(nonce="aa" * 32)
    assert json.loads(d.start())["nonce"] == "aa" * 32
    assert dialer().nonce != dialer().nonce and listener().nonce != listener().nonce


# -- unexpected frames ----------------------------------------------------------------------------


def test_listener_expects_hello_then_auth() -> None:
    with pytest.raises(auth.AuthError, match="expected a 'hello' frame"):
        listener().receive(auth.frame("auth", proof="p"))
    lst = listener()
    lst.receive(_hello())
    with pytest.raises(auth.AuthError, match="expected a 'auth' frame"):
        lst.receive(_hello())  # hello again
    with pytest.raises(auth.AuthError, match=r"hello.nonce: missing or invalid"):
        listener().receive(auth.frame("hello", node="n1", address="a:1", url="u"))
    with pytest.raises(auth.AuthError, match="not JSON"):
        listener().receive("{not json")


def test_dialer_expects_challenge_then_welcome() -> None:
    d = dialer()
    d.start()
    with pytest.raises(auth.AuthError, match="expected a 'challenge' frame"):
        d.receive(auth.frame("welcome"))  # skipping the challenge proves nothing
    assert d.done
    d = dialer()
    with pytest.raises(auth.AuthError, match="expected a 'challenge' frame"):
        d.receive(d.start())  # its own hello reflected back


def test_dialer_refuses_anything_but_welcome_after_auth() -> None:
    d, lst = dialer(), listener()
    challenge = lst.receive(d.start()).send or ""
    d.receive(challenge)
    with pytest.raises(auth.AuthError, match="expected a 'welcome' frame"):
        d.receive(challenge)
    assert d.done


def test_dialer_must_send_hello_first() -> None:
    with pytest.raises(RuntimeError):
        dialer().receive(auth.frame("challenge", node="n2", nonce="n", url="u", proof="p"))


# -- size limit before authentication ---------------------------------------------------------------


def test_oversize_frames_are_refused_before_parsing_on_both_sides() -> None:
    big = auth.frame("hello", node="n1", nonce="x" * 4000, address="a:1", url="u")
    with pytest.raises(auth.FrameTooBig, match="pre-authentication frame over 2048 bytes") as err:
        listener().receive(big)
    assert err.value.close_code == 1009
    d = dialer()
    d.start()
    with pytest.raises(auth.FrameTooBig):
        d.receive(auth.frame("challenge", node="n2", nonce="n", url="u" * 3000, proof="p"))
    assert d.done


def test_a_frame_at_the_limit_is_parsed() -> None:
    base = _hello("n1", "ab" * 32)
    padded = base[:-1] + ',"pad":"' + "x" * (auth.PRE_AUTH_MAX_BYTES - len(base) - 9) + '"}'
    assert len(padded) == auth.PRE_AUTH_MAX_BYTES
    assert listener().receive(padded).send is not None


# -- names ---------------------------------------------------------------------------------------------


def test_a_node_that_dials_its_own_address_stops_before_proving_anything() -> None:
    d = dialer(name="n1", target="n1:7000")
    lst = listener(name="n1")
    challenge = lst.receive(d.start()).send or ""
    with pytest.raises(SelfDial, match="that is this node") as err:
        d.receive(challenge)
    assert not isinstance(err.value, DuplicateName) and err.value.address == "n1:7000"
    assert d.done


def test_another_node_with_the_same_name_is_reported() -> None:
    d = dialer(name="n1", target="10.0.0.9:7000")
    challenge = listener(name="n1").receive(d.start()).send or ""
    with pytest.raises(DuplicateName, match=r"^the node at 10.0.0.9:7000 is also named n1; node names "
                                            r"must be unique \(set node_name\)$"):
        d.receive(challenge)


def test_self_dial_is_detected_even_with_another_secret() -> None:
    # The name check comes first: a twin is reported whatever secret it has.
    d = dialer(name="n1", target="10.0.0.9:7000")
    challenge = listener(OTHER_SECRET, name="n1").receive(d.start()).send or ""
    with pytest.raises(DuplicateName):
        d.receive(challenge)
