"""The collector goes away mid-run and comes back: serving never stops, the
troubleshooting page reports the failures and the drops, and spans made after
the collector returns arrive."""

from __future__ import annotations

import uuid

import httpx
import pytest
import trio

from tests.e2e.otlp_receiver import OtlpReceiver
from tests.e2e.processes import node_process

pytestmark = pytest.mark.e2e


async def test_a_collector_outage_is_reported_and_survived() -> None:
    with OtlpReceiver() as receiver:
        env: dict[str, str | None] = {
            "OTEL_SDK_DISABLED": None, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BSP_MAX_QUEUE_SIZE": "64",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "32",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
        async with node_process(env) as node, httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            before = f"before-{uuid.uuid4().hex[:8]}"
            assert (await http.put(f"/kv/{before}", json=1)).status_code == 200
            await receiver.wait_for_async(
                lambda spans: any(s.attributes.get("kv.key") == before for s in spans), 15)
            healthy = (await http.get("/debug/telemetry")).json()
            assert healthy["traces"]["endpoint"] == receiver.endpoint
            assert healthy["traces"]["compression"] == "gzip" and healthy["traces"]["protocol"] == "grpc"
            assert healthy["export"]["failing"] is False and healthy["export"]["exported_spans"] > 0
            assert healthy["export"]["started_spans"] >= healthy["export"]["exported_spans"]
            assert "sampler" in healthy

            receiver.stop()
            with trio.fail_after(60):  # not a timing test: serving must simply go on
                for i in range(300):  # far more spans than the 64-span queue holds
                    r = await http.put(f"/kv/outage-{i}", json=i)
                    assert r.status_code == 200, (i, r.text)

            async def report() -> dict[str, object]:
                data: dict[str, object] = (await http.get("/debug/telemetry")).json()["export"]
                return data

            with trio.fail_after(30):
                while not ((down := await report())["failing"] and down["failed_exports"]):
                    await trio.sleep(0.2)
            assert down["dropped_spans"], down
            assert down["last_error"] and down["last_error_at"], down

            receiver.start()  # same port
            after = f"after-{uuid.uuid4().hex[:8]}"
            with trio.fail_after(60):
                while True:  # the exporter retries with backoff; keep making spans until one lands
                    assert (await http.put(f"/kv/{after}", json=2)).status_code == 200
                    if any(s.attributes.get("kv.key") == after for s in receiver.spans()):
                        break
                    await trio.sleep(0.5)
            with trio.fail_after(30):
                while (await report())["failing"]:
                    await trio.sleep(0.2)
            metrics = (await http.get("/metrics")).text
            assert "webserver_otel_spans_dropped_total" in metrics
            assert await node.terminate(15) == 0, node.describe()
            logs = node.stderr() + node.stdout()
    assert logs.count("cannot export spans") == 1, logs[-3000:]
    assert "span export to" in logs and "recovered" in logs
