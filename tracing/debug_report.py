"""What `GET /debug/telemetry` answers: the effective telemetry configuration and
the exporter's live counters, so "are my spans leaving this node?" has an answer
without reading logs (the seed's troubleshooting section asks for exactly this)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracing.setup import Telemetry


def telemetry_report(telemetry: Telemetry | None, node_name: str) -> dict[str, Any]:
    if telemetry is None:  # a provider injected by a test or an embedding program
        return {"node": node_name, "traces": {"enabled": None,
                                              "note": "tracer provider supplied by the embedding program"}}
    config = telemetry.config
    report: dict[str, Any] = {
        "node": node_name,
        "traces": {
            "enabled": config.enabled,
            "service_name": config.service_name,
            "endpoint": config.endpoint,
            "protocol": config.protocol,
            "compression": config.compression,
            "timeout_s": config.timeout_s,
            "batch": {"max_queue_size": config.max_queue_size,
                      "schedule_delay_ms": config.schedule_delay_ms,
                      "max_export_batch_size": config.max_export_batch_size,
                      "export_timeout_ms": config.export_timeout_ms},
        },
        "sampler": telemetry.describe_sampling(),
    }
    health = telemetry.health
    if health is not None:
        counters = health.snapshot()
        at = counters.get("last_error_at")
        if isinstance(at, float):
            counters["last_error_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
            counters["last_error_age_s"] = round(time.time() - at, 1)
        report["export"] = counters
    report["logs"] = {"format": config.logs.format, "otlp_export": config.logs.otlp_export}
    if telemetry.log_watch is not None:
        watch = telemetry.log_watch
        report["logs"]["export"] = {"failing": watch.failing, "failed_exports": watch.failed_exports,
                                    "last_error": watch.last_error}
    return report
