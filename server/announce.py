"""The line a node prints once it serves, and the pattern that finds it: the
local-cluster supervisor, the e2e tests and the benchmarks wait for it."""

from __future__ import annotations

import re

# group 1: the node's name, group 2: its URL
LISTENING = re.compile(r"webserver node (\S+) listening on (\S+)")


def listening_line(name: str, url: str) -> str:
    return f"webserver node {name} listening on {url}"
