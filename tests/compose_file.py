"""Reading docker-compose.yml's bind mounts, for the tests that check the mounted configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) for each bind mount (host path starts with . or /)."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):  # long syntax
            if vol.get("type") == "bind":
                mounts.append((vol["source"], vol["target"]))
            continue
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def mounted(services: dict[str, Any], service: str, target: str) -> Path:
    """Host path (under the repository) bind-mounted at `target` in `service`."""
    for source, tgt in bind_mounts(services[service]):
        if tgt == target:
            return (ROOT / source).resolve()
    raise AssertionError(f"{service}: nothing bind-mounted at {target}")
