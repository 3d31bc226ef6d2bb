"""The span catalogue: names and attribute keys as constants, so the code, the
tests and the README speak the same words. The seed's names are a contract;
stable semantic-convention names stand beside the old HTTP ones."""

from __future__ import annotations

from opentelemetry.trace import Span, Status, StatusCode

# Span names
WS_CONNECTION = "WS /ws"  # connection lifetime, SERVER
WS_CONNECT = "websocket.connect"
WS_MESSAGE = "websocket.message"
WS_DISCONNECT = "websocket.disconnect"
KV_PUT = "kv.put"
KV_GET = "kv.get"
KV_DELETE = "kv.delete"
CHAT_BROADCAST = "chat.broadcast"

# HTTP, old names (the seed) and stable names side by side
HTTP_METHOD = "http.method"
HTTP_TARGET = "http.target"
HTTP_STATUS_CODE = "http.status_code"
HTTP_USER_AGENT = "http.user_agent"
HTTP_ROUTE = "http.route"
HTTP_REQUEST_METHOD = "http.request.method"
URL_PATH = "url.path"
URL_QUERY = "url.query"
URL_SCHEME = "url.scheme"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
USER_AGENT_ORIGINAL = "user_agent.original"
CLIENT_ADDRESS = "client.address"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
NETWORK_PROTOCOL_VERSION = "network.protocol.version"
ERROR_TYPE = "error.type"

# WebSocket
WS_PEER = "websocket.peer"
WS_CONNECTION_ID = "websocket.connection_id"
WS_DURATION_MS = "websocket.duration_ms"
WS_MESSAGE_TYPE = "websocket.message_type"
WS_MESSAGE_SIZE = "websocket.message_size"
WS_SUBPROTOCOL = "websocket.subprotocol"
WS_USERNAME = "websocket.username"
WS_CLOSE_CODE = "websocket.close_code"  # set when the server closed
WS_CLOSED_BY = "websocket.closed_by"  # "client" or "server"
WS_PROTOCOL_ERROR = "websocket.protocol_error"  # event: closed for the client's misbehaviour
WS_REQUEST_REFUSED = "websocket.request_refused"  # event: a request answered with an error frame
EXCEPTION_MESSAGE = "exception.message"

# KV
KV_KEY = "kv.key"
KV_NODE = "kv.node"
KV_FOUND = "kv.found"
KV_DURATION_US = "kv.duration_us"
KV_REPLICAS = "kv.replicas"  # how many replicas the coordinator asked
KV_ACKS = "kv.acks"  # how many answered in time (writes: acks, reads: answers)
KV_QUORUM = "kv.quorum"  # how many it needed
KV_REPAIRED = "kv.repaired"  # stale replicas a read sent the newest version to
KV_SUPERSEDED = "kv.superseded"  # replicas that already held a newer (concurrent) write
KV_PEER = "kv.peer"
KV_KEYS = "kv.keys"
KV_HANDOFF = "kv.handoff"
CLUSTER_REQUEST_FAILED = "cluster.request_failed"  # event: a peer did not answer a request
CLUSTER_LINK = "cluster.link"  # span: one peer link's lifetime
CLUSTER_HANDSHAKE = "cluster.handshake"  # span: a failed or refused handshake
CLUSTER_LINK_FAILED = "cluster.link_failed"  # event on cluster.link
CLUSTER_NODE = "cluster.node"
CLUSTER_PEER = "cluster.peer"
CLUSTER_PEER_ADDRESS = "cluster.peer_address"
CLUSTER_DIALER = "cluster.dialer"
CLUSTER_CLOSE_CODE = "cluster.close_code"
CLUSTER_CLOSE_REASON = "cluster.close_reason"
CLUSTER_CLOSED_BY = "cluster.closed_by"

# Chat
CHAT_ROOM = "chat.room"
CHAT_SENDER = "chat.sender"
CHAT_RECIPIENTS = "chat.recipients"
CHAT_DURATION_US = "chat.duration_us"
CHAT_DROPPED = "chat.dropped"
CHAT_ORIGIN_NODE = "chat.origin_node"  # on a forwarded message's delivery: the sender's node
CHAT_REMOTE_NODES = "chat.remote_nodes"  # nodes the message was forwarded to
CHAT_LOCAL_RECIPIENTS = "chat.local_recipients"  # when forwarded: members reached on this node

# Attribute values are user-controlled: keep them short (keys may be 256 bytes).
MAX_ATTRIBUTE_CHARS = 256


def clip(value: str) -> str:
    return value if len(value) <= MAX_ATTRIBUTE_CHARS else value[:MAX_ATTRIBUTE_CHARS] + "…"


def route_template(rule: str) -> str:
    """Werkzeug rule to OpenAPI-style template: `/kv/<path:key>` -> `/kv/{key}`."""
    out: list[str] = []
    i = 0
    while i < len(rule):
        if rule[i] == "<":
            end = rule.index(">", i)
            out.append("{" + rule[i + 1 : end].rpartition(":")[2] + "}")
            i = end + 1
        else:
            out.append(rule[i])
            i += 1
    return "".join(out)


def fail(span: Span, exc: BaseException) -> None:
    """Record a server fault: exception event with stack trace, error.type, ERROR status."""
    span.record_exception(exc)
    span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
