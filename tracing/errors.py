"""Telemetry's own error type (tracing/ never imports server/).

Raised at startup when conf/opentelemetry.toml or an OTEL_* variable is unknown,
mistyped or out of range; the message names the key or the variable. A ValueError,
so code that validates values generically still catches it.
"""

from __future__ import annotations


class TelemetryConfigError(ValueError):
    """The telemetry settings could not be loaded; the message names the key or variable."""
