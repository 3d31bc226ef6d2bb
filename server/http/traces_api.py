"""`/debug/traces/api/...`: the node's recent spans, and whole traces assembled from peers.

(Being built: see issue 5.)"""

from __future__ import annotations

from quart import Blueprint

traces_api = Blueprint("traces_api", __name__)
