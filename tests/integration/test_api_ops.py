"""Operations and live streams: health, readiness, metrics, OpenAPI, docs, WebSockets with auth."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bot.events import Event, EventBus
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

api, shared_db = harness.api, harness.shared_db


async def test_health_ready_metrics_docs(api: Api) -> None:
    async with api.client.get("/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    async with api.client.get("/readyz") as response:
        body = await response.json()
        assert response.status == 200
        assert body["database"] is True
        assert body["components"]["vault"] is True
    _, _task, _ = await api.call("POST", "/tasks", json={"title": "count me"}, expect=201)
    await api.call("GET", "/providers", expect=200)
    await api.call("GET", "/providers/99999999", expect=404)
    async with api.client.get("/metrics") as response:
        assert response.status == 401
    async with api.client.get("/metrics", headers=api.auth("read")) as response:
        assert response.status == 200
        text = await response.text()
    assert 'orchestrator_http_requests_total{method="GET",route="/providers",status="200"}' in text
    assert 'route="/providers/{id}",status="404"' in text
    assert "orchestrator_http_request_duration_seconds_bucket" in text
    assert 'orchestrator_queue_depth{status="pending"}' in text
    assert "orchestrator_model_tokens" in text
    assert "orchestrator_events_dropped" in text
    async with api.client.get("/docs") as response:
        page = await response.text()
        assert response.status == 200
        assert "openapi.json" in page
        assert "orch_" not in page.replace("orch_…", "")


async def test_openapi_document_is_generated_and_valid(api: Api) -> None:
    _, document, _ = await api.call("GET", "/openapi.json", scope="read", expect=200)
    assert document["openapi"] == "3.1.0"
    from jsonschema import Draft202012Validator

    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema), name
    operations = [(path, method) for path, item in document["paths"].items() for method in item]
    assert ("/providers", "post") in operations
    assert ("/knowledge/search", "get") in operations
    assert ("/oauth/{service}/callback", "get") in operations
    assert ("/ws/tasks/{id}", "get") in operations
    list_op = document["paths"]["/providers"]["get"]
    assert {p["name"] for p in list_op["parameters"]} >= {"limit", "cursor", "sort", "kind"}
    assert list_op["x-required-scope"] == "read"
    assert "application/problem+json" in list_op["responses"]["401"]["content"]
    credential_schema = document["components"]["schemas"]["CredentialRead"]
    assert "secret" not in credential_schema["properties"]
    assert "secret_blob" not in credential_schema["properties"]


async def _receive(socket: aiohttp.ClientWebSocketResponse, deadline_s: float = 5.0) -> dict[str, object]:
    message = await socket.receive(timeout=deadline_s)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    value: dict[str, object] = message.json()
    return value


async def _wait_subscribers(bus: EventBus, count: int) -> None:
    deadline = time.monotonic() + 5
    while bus.subscriber_count < count:
        assert time.monotonic() < deadline, "the WebSocket never subscribed"
        await asyncio.sleep(0.01)


async def test_websocket_streams_need_auth_and_deliver_events(api: Api) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await api.client.ws_connect("/ws/monitor")
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as missing:
        await api.client.ws_connect("/ws/tasks/987654321", headers=api.auth("read"))
    assert missing.value.status == 404
    _, task, _ = await api.call("POST", "/tasks", json={"title": "streamed"}, expect=201)
    before = api.bus.subscriber_count
    monitor = await api.client.ws_connect("/ws/monitor", headers=api.auth("read"))
    task_socket = await api.client.ws_connect(f"/ws/tasks/{task['id']}?access_token={api.tokens['read']}")
    await _wait_subscribers(api.bus, before + 2)
    api.bus.publish(Event(topic="monitor", kind="sample", payload={"cpu_pct": 12.5}))
    api.bus.publish(Event(topic="task", kind="token", task_id=task["id"] + 1000, payload={"text": "other"}))
    api.bus.publish(Event(topic="task", kind="token", task_id=task["id"], payload={"text": "Hel"}))
    api.bus.publish(Event(topic="task", kind="done", task_id=task["id"], payload={}))
    sample = await _receive(monitor)
    assert sample["kind"] == "sample"
    assert sample["payload"] == {"cpu_pct": 12.5}
    assert sample["dropped"] == 0
    first, second = await _receive(task_socket), await _receive(task_socket)
    assert (first["kind"], first["payload"], second["kind"]) == ("token", {"text": "Hel"}, "done")
    await monitor.close()
    await task_socket.close()
    deadline = time.monotonic() + 5
    while api.bus.subscriber_count > before:
        assert time.monotonic() < deadline, "closed sockets must leave the bus"
        await asyncio.sleep(0.01)


def test_event_bus_drops_oldest_for_slow_subscribers() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=2)
    fast = bus.subscribe(topics={"monitor"}, maxsize=10)
    for index in range(5):
        bus.publish(Event(topic="monitor", kind="sample", payload={"i": index}))
    bus.publish(Event(topic="task", kind="token", task_id=1))
    assert slow.dropped == 4
    assert bus.dropped_total == 4
    assert fast.pending() == 5
    assert [slow._queue.get_nowait().kind for _ in range(2)] == ["sample", "token"]
    slow.close()
    assert bus.subscriber_count == 1


async def test_workers_are_listed_running_silent_and_on_request_stopped(api: Api) -> None:
    import uuid
    from datetime import timedelta

    from bot.db.base import utcnow
    from bot.db.models import QueueWorker

    tag = uuid.uuid4().hex[:8]
    now = utcnow()
    async with api.sessions() as session, session.begin():
        session.add_all([
            QueueWorker(id=f"{tag}-running", hostname="a", pid=11, concurrency=5,
                        started_at=now - timedelta(minutes=3), heartbeat_at=now),
            QueueWorker(id=f"{tag}-silent", hostname="b", pid=12, concurrency=2,
                        started_at=now - timedelta(minutes=2), heartbeat_at=now - timedelta(minutes=2)),
            QueueWorker(id=f"{tag}-stopped", hostname="c", pid=13, concurrency=5,
                        started_at=now - timedelta(minutes=1), heartbeat_at=now - timedelta(minutes=1),
                        stopped_at=now - timedelta(seconds=30)),
        ])

    def ours(body: dict[str, list[dict[str, object]]]) -> dict[str, dict[str, object]]:
        return {str(w["id"]).removeprefix(f"{tag}-"): w for w in body["items"] if str(w["id"]).startswith(tag)}

    _, listed, _ = await api.call("GET", "/workers", scope="read", expect=200)
    assert {name: w["state"] for name, w in ours(listed).items()} == {"running": "running", "silent": "silent"}
    assert ours(listed)["silent"]["host"] == "b" and ours(listed)["silent"]["concurrency"] == 2
    _, everyone, _ = await api.call("GET", "/workers?all=true", scope="read", expect=200)
    assert list(ours(everyone)) == ["running", "silent", "stopped"]  # oldest first
    assert ours(everyone)["stopped"]["stopped_at"] is not None
    for bad in ("/workers?all=maybe", "/workers?limit=5"):
        status, problem, _ = await api.call("GET", bad, scope="read")
        assert status == 422 and problem["type"].endswith("validation-failed"), bad
    async with api.client.get("/workers") as response:
        assert response.status == 401
    async with api.client.get("/metrics", headers=api.auth("read")) as response:
        text = await response.text()
    running = next(line for line in text.splitlines() if line.startswith('orchestrator_queue_workers{state="running"}'))
    assert float(running.split()[-1]) >= 1
