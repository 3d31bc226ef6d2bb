"""Unit tests of the cluster's pure parts: the message envelope (protocol.py), the
handshake primitives (auth.py) and the membership state machine (membership.py)."""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest

from server.cluster import auth
from server.cluster.membership import Membership, Status
from server.cluster.protocol import REPLY, VERSION, Message, ProtocolError, decode, need

# -- protocol.py -----------------------------------------------------------------


def test_full_message_round_trips() -> None:
    message = Message("kv.put", {"key": "k", "value": "välue ✓", "n": [1, 2]}, id=7, re=None,
                      error=None, trace={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    frame = message.encode()
    assert decode(frame) == message
    assert decode(frame.encode("utf-8")) == message  # binary frames too
    assert "välue ✓" in frame  # not escaped: ensure_ascii=False
    assert json.loads(frame)["v"] == VERSION


def test_reply_round_trips_and_minimal_encoding_omits_unset_fields() -> None:
    reply = Message(REPLY, {}, re=3, error="no such key")
    assert decode(reply.encode()) == reply
    assert json.loads(Message("ping").encode()) == {"v": 1, "type": "ping", "body": {}}


def test_missing_optional_fields_default() -> None:
    message = decode('{"v":1,"type":"ping"}')
    assert message == Message("ping", {}, None, None, None, {})
    # null is "not set" for the optional scalar fields
    assert decode('{"v":1,"type":"t","id":null,"re":null,"error":null}') == Message("t")


@pytest.mark.parametrize("frame", ["", "{", "not json", '{"v":1,', b"\xff\xfe"])
def test_frames_that_are_not_json_or_utf8(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError, match=r"not JSON|not UTF-8"):
        decode(frame)


@pytest.mark.parametrize("frame", ["[]", "1", "null", '"text"', "[1, 2]", "true"])
def test_frames_that_are_not_objects(frame: str) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        decode(frame)


@pytest.mark.parametrize("version", [None, 0, 2, "1", [1], {"v": 1}])
def test_wrong_or_missing_version(version: Any) -> None:
    data: dict[str, Any] = {"type": "ping", "body": {}}
    if version is not None:
        data["v"] = version
    with pytest.raises(ProtocolError, match="unsupported protocol version"):
        decode(json.dumps(data))


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_1(version: Any) -> None:
    with pytest.raises(ProtocolError):
        decode(json.dumps({"v": version, "type": "ping"}))


def _frame(**fields: Any) -> str:
    return json.dumps({"v": 1, "type": "t", **fields})


@pytest.mark.parametrize("kind", [None, "", 5, True, ["a"], {"a": 1}])
def test_bad_type(kind: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^type:"):
        decode(_frame(type=kind))


def test_missing_type() -> None:
    with pytest.raises(ProtocolError, match=r"^type:"):
        decode('{"v":1,"body":{}}')


@pytest.mark.parametrize("body", [None, [], "x", 1, True])
def test_bad_body(body: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^body:"):
        decode(_frame(body=body))


@pytest.mark.parametrize("trace", [None, [], "00-abc", 1, {"traceparent": 1}, {"a": None},
                                   {"a": "ok", "b": ["x"]}])
def test_bad_trace(trace: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^trace:"):
        decode(_frame(trace=trace))


@pytest.mark.parametrize("name", ["id", "re"])
@pytest.mark.parametrize("value", ["1", 1.5, 1.0, True, False, [1], {"n": 1}])
def test_bad_ids(name: str, value: Any) -> None:
    with pytest.raises(ProtocolError, match=f"^{name}:"):
        decode(_frame(**{name: value}))


@pytest.mark.parametrize("name", ["id", "re"])
def test_ids_accept_any_integer(name: str) -> None:
    assert getattr(decode(_frame(**{name: -(2**70)})), name) == -(2**70)
    assert getattr(decode(_frame(**{name: 0})), name) == 0


@pytest.mark.parametrize("error", [1, True, [], {"why": "x"}])
def test_bad_error(error: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^error:"):
        decode(_frame(type=REPLY, re=1, error=error))


def test_need_returns_typed_fields_and_names_the_missing_one() -> None:
    body: dict[str, Any] = {"key": "k", "n": 3, "flag": True, "f": 1.5, "items": []}
    assert need(body, "key", str) == "k"
    assert need(body, "n", int) == 3
    assert need(body, "f", (int, float)) == 1.5
    assert need(body, "items", list) == []
    for name, kind in (("missing", str), ("key", int), ("flag", int), ("n", str)):
        with pytest.raises(ProtocolError, match=f"body.{name}:"):
            need(body, name, kind)


# -- auth.py ---------------------------------------------------------------------

SECRET = b"s" * 32
ARGS = ("dn" * 32, "ln" * 32, "n1", "n2")


def test_proof_is_deterministic_hex_sha256() -> None:
    first = auth.proof(SECRET, "dialer", *ARGS)
    assert first == auth.proof(SECRET, "dialer", *ARGS)
    assert len(first) == 64 and int(first, 16) >= 0


def test_symmetric_roles_give_different_proofs() -> None:
    # A listener's proof cannot be replayed back as the dialer's (reflection attack).
    assert auth.proof(SECRET, "dialer", *ARGS) != auth.proof(SECRET, "listener", *ARGS)


@pytest.mark.parametrize("changed", [
    (b"t" * 32, "dialer", *ARGS),  # other secret
    (SECRET, "dialer", ARGS[1], ARGS[0], ARGS[2], ARGS[3]),  # nonces swapped
    (SECRET, "dialer", ARGS[0], ARGS[1], ARGS[3], ARGS[2]),  # names swapped
    (SECRET, "dialer", ARGS[0], ARGS[1], "n1", "n3"),  # other pair of nodes
    (SECRET, "dialer", auth.new_nonce(), ARGS[1], "n1", "n2"),  # fresh nonce
])
def test_proof_binds_secret_nonces_names(changed: tuple[bytes, str, str, str, str, str]) -> None:
    assert auth.proof(*changed) != auth.proof(SECRET, "dialer", *ARGS)


def test_proof_parts_are_length_prefixed() -> None:
    # "n1" + "n2x" and "n1n" + "2x" concatenate to the same bytes but must differ.
    assert (auth.proof(SECRET, "dialer", "a", "b", "n1", "n2x")
            != auth.proof(SECRET, "dialer", "a", "b", "n1n", "2x"))


def test_verify_accepts_only_the_expected_string() -> None:
    expected = auth.proof(SECRET, "listener", *ARGS)
    assert auth.verify(expected, expected)
    assert not auth.verify(expected, expected[:-1] + ("0" if expected[-1] != "0" else "1"))
    assert not auth.verify(expected, expected.upper())
    assert not auth.verify(expected, "")
    assert not auth.verify(expected, expected + "00")
    assert not auth.verify(expected, "é" * 64)  # non-ASCII: no TypeError from compare_digest


@pytest.mark.parametrize("given", [None, 0, 1.5, True, [], {}, b"bytes"])
def test_verify_rejects_non_strings(given: Any) -> None:
    expected = auth.proof(SECRET, "listener", *ARGS)
    assert auth.verify(expected, given) is False


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth.py calls through
    expected = auth.proof(SECRET, "dialer", *ARGS)
    assert not auth.verify(expected, "0" * 64)
    assert auth.verify(expected, expected)
    assert [a for a, _ in calls] == [expected.encode()] * 2


def test_frame_and_parse_round_trip() -> None:
    raw = auth.frame("hello", node="n1", nonce="ab" * 32, address="n1:7000", url="http://n1")
    assert json.loads(raw)["type"] == "hello"
    assert auth.parse(raw, "hello", "node", "nonce") == {"node": "n1", "nonce": "ab" * 32}
    assert auth.parse(raw.encode(), "hello", "url") == {"url": "http://n1"}
    assert auth.parse(auth.frame("welcome"), "welcome") == {}


def _hello_of_size(size: int) -> str:
    base = auth.frame("hello", node="n", pad="")
    return auth.frame("hello", node="n", pad="x" * (size - len(base)))


def test_parse_rejects_oversize_frames_before_parsing() -> None:
    at_limit = _hello_of_size(auth.PRE_AUTH_MAX_BYTES)
    assert len(at_limit) == auth.PRE_AUTH_MAX_BYTES
    assert auth.parse(at_limit, "hello", "node") == {"node": "n"}
    assert auth.parse(at_limit.encode(), "hello", "node") == {"node": "n"}
    over = _hello_of_size(auth.PRE_AUTH_MAX_BYTES + 1)
    # "[" * 100_000 would make json.loads recurse: the size check must come first
    for raw in (over, over.encode(), "[" * 100_000):
        with pytest.raises(auth.AuthError, match="over 2048 bytes"):
            auth.parse(raw, "hello", "node")


@pytest.mark.parametrize("raw", ["", "{", "not json", b"\xff\xfe"])
def test_parse_rejects_non_json(raw: str | bytes) -> None:
    with pytest.raises(auth.AuthError, match="not JSON"):
        auth.parse(raw, "hello")


@pytest.mark.parametrize("raw", [
    auth.frame("challenge", node="n1"),  # wrong kind
    '{"v":1}',  # no kind
    '{"v":2,"type":"hello","node":"n1"}',  # wrong version
    '{"type":"hello","node":"n1"}',  # no version
    '[{"v":1,"type":"hello"}]',  # not an object
    '"hello"',
    "null",
])
def test_parse_rejects_wrong_kind_or_shape(raw: str) -> None:
    with pytest.raises(auth.AuthError, match="expected a 'hello' frame"):
        auth.parse(raw, "hello", "node")


@pytest.mark.parametrize("fields", [
    {},  # missing
    {"node": ""},  # empty
    {"node": 5},
    {"node": None},
    {"node": ["n1"]},
    {"node": "x" * 513},  # over 512 characters
])
def test_parse_rejects_missing_or_invalid_fields(fields: dict[str, Any]) -> None:
    raw = json.dumps({"v": 1, "type": "hello", "nonce": "ab", **fields})
    with pytest.raises(auth.AuthError, match=r"hello.node: missing or invalid"):
        auth.parse(raw, "hello", "nonce", "node")


def test_parse_accepts_a_512_character_field_and_ignores_extra_ones() -> None:
    raw = json.dumps({"v": 1, "type": "auth", "proof": "p" * 512, "extra": [1, 2]})
    assert auth.parse(raw, "auth", "proof") == {"proof": "p" * 512}


def test_nonces_are_fresh_hex() -> None:
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 2 * auth.NONCE_BYTES and int(n, 16) >= 0 for n in nonces)


# -- membership.py -----------------------------------------------------------------

FAIL, REMOVE = 5.0, 30.0


def membership(*peers: str, now: float = 0.0) -> Membership:
    m = Membership("n1", "n1:7000", "http://n1")
    for name in peers:
        m.seen(name, f"{name}:7000", f"http://{name}", now, 1000.0 + now)
    return m


def test_seen_adds_a_member_and_bumps_the_version() -> None:
    m = Membership("n1", "n1:7000", "http://n1")
    assert m.learn("n2:7000")
    assert m.seen("n2", "n2:7000", "http://n2", 1.0, 1001.0) is True
    assert m.version == 1
    assert m.candidates == set()  # a candidate that answered is a member now
    member = m.members["n2"]
    assert (member.status, member.last_seen, member.last_seen_wall) == (Status.UP, 1.0, 1001.0)
    assert m.up_names() == ["n1", "n2"]


def test_seen_again_only_refreshes_last_seen() -> None:
    m = membership("n2")
    assert m.seen("n2", "", "", 3.0, 1003.0) is False
    assert m.version == 1
    member = m.members["n2"]
    assert member.last_seen == 3.0
    # empty address/url (a message, not a handshake) keeps the known ones
    assert (member.cluster_address, member.http_url) == ("n2:7000", "http://n2")
    m.seen("n2", "n2:7001", "http://n2b", 4.0, 1004.0)
    assert (member.cluster_address, member.http_url) == ("n2:7001", "http://n2b")


def test_learn_only_new_addresses_of_others() -> None:
    m = membership("n2")
    assert not m.learn("")
    assert not m.learn("n1:7000")  # self
    assert not m.learn("n2:7000")  # already a member
    assert m.learn("n3:7000")
    assert not m.learn("n3:7000")  # already a candidate
    assert m.candidates == {"n3:7000"}
    assert m.version == 1  # candidates do not move placement


def test_silent_member_goes_down_after_failure_timeout_only() -> None:
    m = membership("n2", "n3")
    version = m.version
    assert m.check(FAIL, FAIL, REMOVE) == ([], [])  # exactly failure_timeout: still up
    assert m.version == version
    m.seen("n3", "", "", 4.0, 1004.0)
    assert m.check(FAIL + 0.01, FAIL, REMOVE) == (["n2"], [])
    assert m.version == version + 1
    assert m.members["n2"].status is Status.DOWN
    assert m.members["n2"].down_since == FAIL + 0.01
    assert m.up_names() == ["n1", "n3"]
    assert m.placement_names() == ["n1", "n2", "n3"]  # down members keep their keys
    assert m.check(FAIL + 1, FAIL, REMOVE) == ([], [])  # reported once
    assert m.version == version + 1


def test_down_member_that_answers_is_up_again() -> None:
    m = membership("n2")
    m.check(10.0, FAIL, REMOVE)
    version = m.version
    assert m.seen("n2", "", "", 11.0, 1011.0) is True
    assert m.version == version + 1
    assert (m.members["n2"].status, m.members["n2"].down_since) == (Status.UP, None)
    assert m.check(12.0, FAIL, REMOVE) == ([], [])


def test_removal_after_removal_timeout_while_a_majority_is_up() -> None:
    m = membership("n2", "n3", "n4")  # 4 with self: 3 up is a strict majority

    def check(t: float) -> tuple[list[str], list[str]]:
        for alive in ("n3", "n4"):
            m.seen(alive, "", "", t, 1000 + t)
        return m.check(t, FAIL, REMOVE)

    assert check(6.0) == (["n2"], [])
    assert check(20.0) == ([], [])
    version = m.version
    assert check(36.0) == ([], [])  # down exactly removal_timeout: not yet
    assert m.version == version
    assert check(36.5) == ([], ["n2"])
    assert m.version == version + 1
    assert "n2" not in m.members
    assert m.candidates == {"n2:7000"}  # still dialed: it may come back
    assert m.placement_names() == ["n1", "n3", "n4"]
    assert check(100.0) == ([], [])  # removed once
    assert m.seen("n2", "n2:7000", "http://n2", 101.0, 1101.0)  # it comes back
    assert m.up_names() == ["n1", "n2", "n3", "n4"] and m.candidates == set()


def test_exactly_half_up_is_not_a_majority() -> None:
    m = membership("n2", "n3", "n4")
    m.seen("n3", "", "", 10.0, 1010.0)
    m.check(10.0, FAIL, REMOVE)  # n2, n4 down: 2 of 4 up
    assert m.up_names() == ["n1", "n3"]
    for t in (50.0, 100.0, 1000.0):
        m.seen("n3", "", "", t, 1000 + t)
        assert m.check(t, FAIL, REMOVE) == ([], [])
    assert sorted(m.members) == ["n2", "n3", "n4"]


def test_isolated_minority_never_removes_anyone() -> None:
    m = membership("n2", "n3", "n4", "n5")
    assert m.check(10.0, FAIL, REMOVE) == (["n2", "n3", "n4", "n5"], [])
    for t in (50.0, 1000.0, 1e6):
        assert m.check(t, FAIL, REMOVE) == ([], [])
    assert sorted(m.members) == ["n2", "n3", "n4", "n5"]
    assert m.up_names() == ["n1"]
    assert all(member.status is Status.DOWN for member in m.members.values())


def test_minority_of_two_in_five_never_removes_but_majority_of_three_does() -> None:
    minority = membership("n2", "n3", "n4", "n5")
    majority = membership("n2", "n3", "n4", "n5")
    for t in (10.0, 50.0):
        minority.seen("n2", "", "", t, 1000 + t)  # n1, n2 | n3, n4, n5
        majority.seen("n2", "", "", t, 1000 + t)
        majority.seen("n3", "", "", t, 1000 + t)  # n1, n2, n3 | n4, n5
        minority.check(t, FAIL, REMOVE)
        majority.check(t, FAIL, REMOVE)
    assert sorted(minority.members) == ["n2", "n3", "n4", "n5"]
    assert sorted(majority.members) == ["n2", "n3"]
    assert majority.candidates == {"n4:7000", "n5:7000"}


def test_single_node_is_its_own_majority() -> None:
    m = Membership("n1", "n1:7000", "http://n1")
    assert m.check(100.0, FAIL, REMOVE) == ([], [])
    assert m.up_names() == ["n1"] and m.version == 0


def test_gossip_and_json() -> None:
    m = membership("n3", "n2")
    assert m.gossip() == [{"name": "n1", "address": "n1:7000"}, {"name": "n3", "address": "n3:7000"},
                          {"name": "n2", "address": "n2:7000"}]
    assert m.up_names() == ["n1", "n2", "n3"]  # self first, then sorted
    assert m.members["n2"].to_json() == {"name": "n2", "status": "up", "cluster_address": "n2:7000",
                                         "http_url": "http://n2", "last_seen": 1000.0}
