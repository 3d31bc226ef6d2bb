"""The one reader of the standard `OTEL_*` variables.

`read_otel_env()` reads the variables the SDK documents into one frozen, typed
`OtelEnv`, checking each (an invalid value raises TelemetryConfigError naming the
variable); tracing/setup.py applies it over conf/opentelemetry.toml (the file <
the variables), and every other module takes its values from there, never from
os.environ.

Per-signal OTLP settings (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, ...) win over the
general ones (`OTEL_EXPORTER_OTLP_ENDPOINT`, ...); `OtelEnv.traces`, `.metrics`
and `.logs` hold the result for each signal. OTEL_EXPORTER_OTLP_CERTIFICATE and
OTEL_EXPORTER_OTLP_INSECURE are checked here and left to the SDK exporters, which
read them (TLS credentials) as they always have.

`OTEL_EXPORTER_OTLP_PROTOCOL` (and `..._{TRACES,METRICS,LOGS}_PROTOCOL`) is `grpc`
(the default) or `http/protobuf`. For OTLP/HTTP a signal posts to the URL the
specification gives, `OtlpSignal.http_endpoint`: its own
`OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT`
(default `http://localhost:4318`) with `/v1/traces`, `/v1/metrics` or `/v1/logs`
appended.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from tracing.errors import TelemetryConfigError

T = TypeVar("T")
SIGNALS = ("traces", "metrics", "logs")
EXPORTERS = ("otlp", "none")
GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)
HTTP_DEFAULT_ENDPOINT = "http://localhost:4318"
COMPRESSIONS = ("gzip", "deflate", "none")
# The SDK's names for OTEL_TRACES_SAMPLER, and ours (an entry point, tracing/sampling.py).
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio", "webserver_rules")
BSP = {"max_queue_size": "OTEL_BSP_MAX_QUEUE_SIZE", "schedule_delay_ms": "OTEL_BSP_SCHEDULE_DELAY",
       "max_export_batch_size": "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
       "export_timeout_ms": "OTEL_BSP_EXPORT_TIMEOUT"}


@dataclass(frozen=True)
class OtlpSignal:
    """One signal's OTLP settings from the environment (None: not set)."""

    endpoint: str | None = None  # the signal's own variable, else the general one (gRPC)
    protocol: str | None = None
    headers: str | None = None
    compression: str | None = None
    timeout_s: float | None = None
    http_endpoint: str | None = None  # where OTLP/HTTP posts this signal (module docstring)


def otlp_http_url(base: str, signal: str) -> str:
    """The general endpoint `base` with the signal's path appended (`/v1/traces`, ...)."""
    return f"{base.rstrip('/')}/v1/{signal}"


def parse_headers(text: str | None) -> dict[str, str] | None:
    """`key=value,...` (OTEL_EXPORTER_OTLP_HEADERS, %-decoded) as a dict: keys lower-cased,
    as the SDK's gRPC exporters parse the same text. None when not set."""
    if text is None:
        return None
    return {key.lower(): value for key, value in _parse_pairs(text, "OTEL_EXPORTER_OTLP_HEADERS").items()}


@dataclass(frozen=True)
class OtelEnv:
    sdk_disabled: bool = False
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    traces_exporter: str | None = None
    metrics_exporter: str | None = None
    logs_exporter: str | None = None
    traces: OtlpSignal = OtlpSignal(http_endpoint=otlp_http_url(HTTP_DEFAULT_ENDPOINT, "traces"))
    metrics: OtlpSignal = OtlpSignal(http_endpoint=otlp_http_url(HTTP_DEFAULT_ENDPOINT, "metrics"))
    logs: OtlpSignal = OtlpSignal(http_endpoint=otlp_http_url(HTTP_DEFAULT_ENDPOINT, "logs"))
    certificate: str | None = None
    insecure: bool | None = None
    sampler: str | None = None
    sampler_arg: str | None = None
    bsp: Mapping[str, int] = field(default_factory=dict)  # TracingConfig's key -> value
    metric_export_interval_ms: int | None = None


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...], note: str = "") -> str | None:
    value = _get(env, name)
    if value is None:
        return None
    value = value.lower()
    if value not in allowed:
        raise TelemetryConfigError(f"{name} {value!r}: use {' or '.join(allowed)}{note}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    value = _choice(env, name, ("true", "false"))
    return None if value is None else value == "true"


def _positive_int(env: Mapping[str, str], name: str) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise TelemetryConfigError(f"{name} {raw!r}: must be an integer") from None
    if value <= 0:
        raise TelemetryConfigError(f"{name} {raw!r}: must be positive")
    return value


def _pairs(env: Mapping[str, str], name: str) -> dict[str, str] | None:
    """`key=value,key=value` (OTEL_RESOURCE_ATTRIBUTES, the headers); values may be %-encoded."""
    raw = _get(env, name)
    return None if raw is None else _parse_pairs(raw, name)


def _parse_pairs(raw: str, name: str) -> dict[str, str]:
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TelemetryConfigError(f"{name}: {item.strip()!r} is not key=value")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _protocol(env: Mapping[str, str], name: str) -> str | None:
    return _choice(env, name, PROTOCOLS)


def _timeout(env: Mapping[str, str], name: str) -> float | None:
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise TelemetryConfigError(f"{name} {raw!r}: must be a number of seconds") from None
    if value <= 0:
        raise TelemetryConfigError(f"{name} {raw!r}: must be positive")
    return value


def _compression(env: Mapping[str, str], name: str) -> str | None:
    return _choice(env, name, COMPRESSIONS)


def _headers(env: Mapping[str, str], name: str) -> str | None:
    _pairs(env, name)  # checked here; the SDK exporter parses the text itself
    return _get(env, name)


def _first(env: Mapping[str, str], signal: str, suffix: str,
           read: Callable[[Mapping[str, str], str], T | None]) -> T | None:
    """The per-signal variable, else the general one."""
    value = read(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_{suffix}")
    return value if value is not None else read(env, f"OTEL_EXPORTER_OTLP_{suffix}")


def _signal(env: Mapping[str, str], signal: str) -> OtlpSignal:
    own = _get(env, f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    http_endpoint = own if own is not None else otlp_http_url(
        _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT") or HTTP_DEFAULT_ENDPOINT, signal)
    return OtlpSignal(endpoint=_first(env, signal, "ENDPOINT", _get), http_endpoint=http_endpoint,
                      protocol=_first(env, signal, "PROTOCOL", _protocol),
                      headers=_first(env, signal, "HEADERS", _headers),
                      compression=_first(env, signal, "COMPRESSION", _compression),
                      timeout_s=_first(env, signal, "TIMEOUT", _timeout))


def _sampler(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    name = _get(env, "OTEL_TRACES_SAMPLER")
    if name is None:
        return None, None  # OTEL_TRACES_SAMPLER_ARG alone means nothing (as in the SDK)
    name = name.lower()
    if name not in SAMPLERS:
        raise TelemetryConfigError(
            f"OTEL_TRACES_SAMPLER {name!r} is not known (use one of {', '.join(SAMPLERS)})")
    arg = _get(env, "OTEL_TRACES_SAMPLER_ARG")
    if name.endswith("traceidratio") and arg is not None:
        try:
            rate = float(arg)
        except ValueError:
            rate = -1.0
        if not 0.0 <= rate <= 1.0:
            raise TelemetryConfigError(
                f"OTEL_TRACES_SAMPLER_ARG must be a number from 0.0 to 1.0 (got {arg!r})")
    return name, arg


def read_otel_env(environ: Mapping[str, str] | None = None) -> OtelEnv:
    """The OTEL_* variables of `environ` (os.environ when None), checked."""
    env = os.environ if environ is None else environ
    sampler, sampler_arg = _sampler(env)
    bsp = {key: value for key, var in BSP.items() if (value := _positive_int(env, var)) is not None}
    return OtelEnv(
        sdk_disabled=bool(_bool(env, "OTEL_SDK_DISABLED")),
        service_name=_get(env, "OTEL_SERVICE_NAME"),
        resource_attributes=_pairs(env, "OTEL_RESOURCE_ATTRIBUTES") or {},
        traces_exporter=_choice(env, "OTEL_TRACES_EXPORTER", EXPORTERS),
        metrics_exporter=_choice(env, "OTEL_METRICS_EXPORTER", EXPORTERS,
                                 " (Prometheus is always served at GET /metrics)"),
        logs_exporter=_choice(env, "OTEL_LOGS_EXPORTER", EXPORTERS),
        traces=_signal(env, "traces"), metrics=_signal(env, "metrics"), logs=_signal(env, "logs"),
        certificate=_get(env, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        insecure=_bool(env, "OTEL_EXPORTER_OTLP_INSECURE"),
        sampler=sampler, sampler_arg=sampler_arg, bsp=bsp,
        metric_export_interval_ms=_positive_int(env, "OTEL_METRIC_EXPORT_INTERVAL"),
    )
