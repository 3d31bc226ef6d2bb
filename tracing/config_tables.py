"""A table of conf/opentelemetry.toml, checked before its values are read."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from tracing.errors import TelemetryConfigError


def checked_table(table: Any, section: str, keys: Collection[str], prefix: str) -> Mapping[str, Any]:
    """`table` when it is a table holding only `keys`; else TelemetryConfigError naming the key.
    `prefix` starts every message (the file's name and ": ", or "")."""
    if not isinstance(table, Mapping):
        raise TelemetryConfigError(f"{prefix}{section} must be a table")
    for key in table:
        if key not in keys:
            raise TelemetryConfigError(f"{prefix}unknown key {section}.{key}")
    return table


def flag(table: Mapping[str, Any], section: str, key: str, default: bool, prefix: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise TelemetryConfigError(f"{prefix}{section}.{key} must be true or false (got {value!r})")
    return value
