"""CRUD for every resource on SQLite and MariaDB, relationship and JSON-field validation."""

from __future__ import annotations

import asyncio
import io
import uuid
from decimal import Decimal
from typing import Any

from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

api, shared_db = harness.api, harness.shared_db


def same(left: Any, right: Any) -> bool:
    """Equal, comparing decimal strings by value ("12.500000" == "12.5")."""
    if isinstance(left, str) and isinstance(right, str) and left.replace(".", "", 1).isdigit():
        return Decimal(left) == Decimal(right)
    return bool(left == right)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def crud(
    api: Api,
    path: str,
    create: dict[str, Any],
    patch: dict[str, Any],
    *,
    delete: bool = True,
    read: str = "read",
    write: str = "write",
) -> dict[str, Any]:
    """Create, read, list, update and (optionally) delete one row; return the created row."""
    _status, created, headers = await api.call("POST", path, json=create, scope=write, expect=201)
    assert headers["Location"] == f"{path}/{created['id']}"
    for key, value in create.items():
        if key not in ("secret", "definition", "metadata") and not isinstance(value, dict):
            assert same(created[key], value), (key, created[key], value)
    _, fetched, _ = await api.call("GET", f"{path}/{created['id']}", scope=read, expect=200)
    assert fetched == created
    _, page, headers = await api.call("GET", f"{path}?limit=200&sort=-id", scope=read, expect=200)
    assert next(item for item in page["items"] if item["id"] == created["id"]) == fetched
    assert page["total"] >= 1
    assert 'rel="first"' in headers["Link"]
    _, updated, _ = await api.call("PATCH", f"{path}/{created['id']}", scope=write, json=patch, expect=200)
    for key, value in patch.items():
        if key not in ("secret", "definition", "revoked"):
            assert same(updated[key], value), (key, updated[key], value)
    if delete:
        await api.call("DELETE", f"{path}/{created['id']}", scope=write, expect=204)
        await api.call("GET", f"{path}/{created['id']}", scope=read, expect=404)
    return created


async def test_crud_every_resource(api: Api) -> None:
    provider = await crud(
        api,
        "/providers",
        {"name": unique("prov"), "kind": "ollama", "base_url": "http://127.0.0.1:11434", "priority": 3},
        {"priority": 5, "is_enabled": False},
        delete=False,
    )
    model = await crud(
        api,
        "/models",
        {"provider_id": provider["id"], "model_key": unique("qwen"), "context_length": 8192},
        {"display_name": "Qwen", "is_enabled": False},
        delete=False,
    )
    other_model = await crud(
        api, "/models", {"provider_id": provider["id"], "model_key": unique("llama")}, {"family": "llama"}, delete=False
    )
    role = await crud(
        api,
        "/specialized-ais",
        {"name": unique("coder"), "role": "coder", "system_prompt": "Code.", "preferred_model_id": model["id"]},
        {"temperature": 0.7},
        delete=False,
    )
    template = await crud(
        api,
        "/templates",
        {
            "name": unique("tpl"),
            "body": "Summarise {text}",
            "specialized_ai_id": role["id"],
            "variables": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
        {"description": "summaries"},
        delete=False,
    )
    workflow = await crud(
        api,
        "/workflows",
        {
            "name": unique("wf"),
            "definition": {
                "steps": [
                    {"name": "draft", "template_id": template["id"]},
                    {"name": "review", "specialized_ai_id": role["id"], "depends_on": ["draft"]},
                ]
            },
        },
        {"definition": {"steps": [{"name": "only", "template_id": template["id"]}]}},
        delete=False,
    )
    _, changed, _ = await api.call("GET", f"/workflows/{workflow['id']}", expect=200)
    assert changed["version"] == 2
    task = await crud(
        api,
        "/tasks",
        {"title": "write docs", "priority": 2, "category": "writing", "workflow_id": workflow["id"]},
        {"priority": 9},
        delete=False,
    )
    assert task["status"] == "pending"
    assert task["user_id"] == api.user_id
    await crud(
        api,
        "/subtasks",
        {
            "task_id": task["id"],
            "seq": 1,
            "title": "outline",
            "executor_model_id": model["id"],
            "validator_model_id": other_model["id"],
        },
        {"title": "outline v2"},
    )
    await crud(api, "/instructions", {"scope": "category", "category": "writing", "text": "Be brief."}, {"priority": 4})
    source = await crud(
        api,
        "/knowledge-sources",
        {"name": unique("src"), "kind": "url", "uri": "https://example.org/docs"},
        {"is_active": False},
        delete=False,
    )
    entry = await crud(
        api,
        "/knowledge",
        {"title": "Vault", "content": "AES-GCM seals secrets", "source_id": source["id"], "tags": ["security"]},
        {"content": "AES-256-GCM seals every secret"},
        delete=False,
    )
    assert entry["content_sha256"]
    assert entry["has_embedding"] is False
    conversation = await crud(
        api, "/chat/conversations", {"platform": "console", "channel_id": unique("c")}, {"title": "docs"}, delete=False
    )
    _status, message, _ = await api.call(
        "POST",
        "/chat/messages",
        json={"conversation_id": conversation["id"], "role": "user", "content": "hello"},
        expect=201,
    )
    _, page, _ = await api.call("GET", f"/chat/messages?conversation_id={conversation['id']}", expect=200)
    assert [m["id"] for m in page["items"]] == [message["id"]]
    await api.call("DELETE", f"/chat/messages/{message['id']}", expect=204)
    await crud(
        api,
        "/external-accounts",
        {
            "service": "openai",
            "account_name": unique("acct"),
            "credits_remaining": "12.5",
            "metadata": {"plan": "pay-as-you-go"},
        },
        {"credits_remaining": "10.25"},
    )
    user = await crud(
        api,
        "/users",
        {"username": unique("ana"), "role": "operator"},
        {"language": "pt-BR"},
        delete=False,
        read="admin",
        write="admin",
    )
    credential = await crud(
        api,
        "/credentials",
        {"name": unique("gh"), "service": "github", "secret": {"personal_access_token": "ghp_abcdefTESTSECRET123"}},
        {"scopes": ["repo"]},
        delete=False,
        write="admin",
    )
    assert "secret" not in credential
    assert "secret_blob" not in credential
    await api.call("DELETE", f"/credentials/{credential['id']}", expect=204)
    await api.call("DELETE", f"/users/{user['id']}", expect=204)
    await api.call("DELETE", f"/conversations/{conversation['id']}", expect=404)
    await api.call("DELETE", f"/chat/conversations/{conversation['id']}", expect=204)
    # Read-only resources list and get.
    _, templates, _ = await api.call("GET", "/credential-templates?limit=50", scope="read", expect=200)
    assert {"github", "gmail"} <= {t["service"] for t in templates["items"]}
    await api.call("GET", "/execution-logs?level=error", scope="read", expect=200)
    await api.call("GET", "/alerts?status=open", scope="read", expect=200)
    # Deleting a provider cascades to its models.
    await api.call("DELETE", f"/providers/{provider['id']}", expect=204)
    await api.call("GET", f"/models/{model['id']}", expect=404)


async def test_relationship_validation(api: Api) -> None:
    status, problem, headers = await api.call("POST", "/models", json={"provider_id": 999_999, "model_key": "x"})
    assert status == 422
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["type"] == "urn:orchestrator:problem:reference-not-found"
    assert problem["missing"] == [{"field": "provider_id", "id": 999_999, "resource": "ai_providers"}]
    _, _, _ = await api.call("POST", "/subtasks", json={"task_id": 888_888, "seq": 1, "title": "x"}, expect=422)
    status, problem, _ = await api.call(
        "POST",
        "/workflows",
        json={"name": unique("wf"), "definition": {"steps": [{"name": "a", "template_id": 777_777}]}},
    )
    assert status == 422
    assert problem["type"].endswith("reference-not-found")
    _, user_page, _ = await api.call("GET", "/users?limit=1", expect=200)
    status, problem, _ = await api.call("POST", "/tokens", json={"name": "t", "scopes": ["read"], "user_id": 555_555})
    assert status == 422
    assert user_page["total"] >= 1


async def test_json_fields_must_match_their_schema(api: Api) -> None:
    bad_bodies = [
        ("/workflows", {"name": unique("wf"), "definition": {"steps": []}}),
        ("/workflows", {"name": unique("wf"), "definition": {"steps": [{"name": "a"}]}}),
        (
            "/workflows",
            {"name": unique("wf"), "definition": {"steps": [{"name": "a", "template_id": 1, "depends_on": ["later"]}]}},
        ),
        ("/templates", {"name": unique("t"), "body": "x", "variables": {"type": 5}}),
        (
            "/templates",
            {
                "name": unique("t"),
                "body": "{undeclared}",
                "variables": {"type": "object", "properties": {"x": {"type": "string"}}},
            },
        ),
        ("/instructions", {"scope": "task", "text": "needs task id"}),
        ("/tasks", {"title": "t", "origin": {"platform": "slack", "unknown": 1}}),
        ("/credentials", {"name": unique("g"), "service": "github", "secret": {"nonsense_field": "v"}}),
        ("/providers", {"name": unique("p"), "kind": "not-a-kind", "base_url": "http://x.test"}),
        ("/providers", {"name": unique("p"), "kind": "ollama", "base_url": "ftp://x.test"}),
    ]
    for path, body in bad_bodies:
        status, problem, _ = await api.call("POST", path, json=body)
        assert status == 422, (path, body, status, problem)
        assert problem["type"] == "urn:orchestrator:problem:validation-failed"
        assert problem["errors"]
    _, _executor_model, _ = await api.call("GET", "/models?limit=1", expect=200)


async def test_malformed_and_hostile_input(api: Api) -> None:
    status, problem, _ = await api.call(
        "POST", "/providers", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert problem["type"].endswith("malformed-request")
    status, problem, _ = await api.call("POST", "/providers", data=b"name=x", headers={"Content-Type": "text/plain"})
    assert status == 415
    assert problem["type"].endswith("unsupported-media-type")
    status, problem, _ = await api.call(
        "POST",
        "/knowledge",
        data=io.BytesIO(b'{"title":"' + b"x" * 2_000_000 + b'"}'),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413
    assert problem["type"].endswith("payload-too-large")
    status, problem, _ = await api.call("GET", "/providers?limit=100000")
    assert status == 422
    status, problem, _ = await api.call("GET", "/providers?sort=secret_column")
    assert status == 422
    status, problem, _ = await api.call("GET", "/providers?unknown=1")
    assert status == 422
    status, problem, _ = await api.call("GET", "/providers/99999999999999999999")
    assert status == 404
    assert problem["type"].endswith("not-found")
    status, problem, _ = await api.call("PUT", "/providers/1")
    assert status == 405
    assert problem["type"].endswith("method-not-allowed")
    status, problem, _ = await api.call("GET", "/execution-logs?since=2026-01-01T00:00:00")
    assert status == 422  # a time without an offset is ambiguous
    status, problem, _ = await api.call("POST", "/tasks", json={"title": "t", "deadline_at": "2026-01-01T10:00:00"})
    assert status == 422
    await api.call("GET", "/execution-logs?since=2026-01-01T00:00:00%2B02:00", expect=200)
    status, problem, _ = await api.call("GET", "/providers?cursor=not-a-cursor")
    assert status == 400
    assert problem["type"].endswith("invalid-cursor")
    status, problem, _ = await api.call("PATCH", "/providers/1", json={"name": None})
    assert status == 422
    name = unique("dup")
    await api.call("POST", "/providers", json={"name": name, "kind": "ollama", "base_url": "http://a.test"}, expect=201)
    status, problem, _ = await api.call(
        "POST", "/providers", json={"name": name, "kind": "ollama", "base_url": "http://a.test"}
    )
    assert status == 409
    assert problem["type"].endswith("conflict")
    _, _, headers = await api.call("GET", "/healthz", headers={"X-Request-ID": "abc-123"}, expect=200)
    assert headers["X-Request-ID"] == "abc-123"
    _, _, headers = await api.call("GET", "/healthz", headers={"X-Request-ID": "bad id\u00e9"}, expect=200)
    assert headers["X-Request-ID"] != "bad id\u00e9"
    assert len(headers["X-Request-ID"]) == 32


async def test_task_actions(api: Api) -> None:
    from bot.engine.queue import JobQueue, JobSpec

    _, task, _ = await api.call("POST", "/tasks", json={"title": "cancel me"}, expect=201)
    queue = JobQueue(api.engine)
    job_id, _ = await queue.enqueue(JobSpec(kind="subtask.execute", idempotency_key=unique("job"), task_id=task["id"]))
    from sqlalchemy import select

    from bot.db.models.queue import Job
    async with api.sessions() as session:  # creating a task queued the engine's planning job
        plan = (await session.execute(select(Job).where(Job.idempotency_key == f"task:{task['id']}:plan"))).scalar_one()
    assert plan.kind == "task.plan"
    assert plan.status == "queued"
    subscription = api.bus.subscribe(task_id=task["id"])
    _, cancelled, _ = await api.call("POST", f"/tasks/{task['id']}/cancel", scope="write", expect=200)
    assert cancelled["status"] == "cancelled"
    assert (await queue.get(job_id)).status == "cancelled"
    async with asyncio.timeout(5):
        event = await subscription.get()
    assert event.kind == "cancelled"
    assert event.payload["jobs"] == 2
    await api.call("POST", f"/tasks/{task['id']}/cancel", scope="write", expect=409)
    await api.call("POST", f"/tasks/{task['id']}/retry", scope="write", expect=409)
    _, stats, _ = await api.call("GET", "/tasks/stats", scope="read", expect=200)
    assert stats["by_status"]["cancelled"] >= 1
    assert stats["jobs_by_status"]["cancelled"] >= 1
    # A failed task whose job was dead-lettered gets its work back in the queue.
    _, failed, _ = await api.call("POST", "/tasks", json={"title": "retry me"}, expect=201)
    from sqlalchemy import update

    from bot.db.models import Task, TaskStatus
    from bot.db.models.queue import Job

    dead_id, _ = await queue.enqueue(
        JobSpec(kind="subtask.execute", idempotency_key=unique("job"), task_id=failed["id"])
    )
    async with api.sessions() as session:
        await session.execute(update(Job).where(Job.id == dead_id).values(status="dead", attempts=5))
        await session.execute(update(Task).where(Task.id == failed["id"]).values(status=TaskStatus.FAILED))
        await session.commit()
    _, retried, _ = await api.call("POST", f"/tasks/{failed['id']}/retry", scope="write", expect=200)
    assert retried["status"] == "queued"
    assert (await queue.get(dead_id)).status == "queued"
    # Workflows execute into a task.
    _, template, _ = await api.call("POST", "/templates", json={"name": unique("t"), "body": "b"}, expect=201)
    _, workflow, _ = await api.call(
        "POST",
        "/workflows",
        json={"name": unique("wf"), "definition": {"steps": [{"name": "s", "template_id": template["id"]}]}},
        expect=201,
    )
    _, run, headers = await api.call(
        "POST", f"/workflows/{workflow['id']}/execute", scope="write", json={"input": "go"}, expect=201
    )
    assert run["workflow_id"] == workflow["id"]
    assert headers["Location"] == f"/tasks/{run['id']}"


async def test_alert_lifecycle(api: Api) -> None:
    from bot.db.models import Alert

    async with api.sessions() as session:
        alert = Alert(kind="cpu_high", message="CPU 95%", dedupe_key=unique("cpu"))
        alert.open_key = alert.dedupe_key
        session.add(alert)
        await session.commit()
    _, acked, _ = await api.call(
        "PATCH", f"/alerts/{alert.id}", scope="write", json={"status": "acknowledged"}, expect=200
    )
    assert acked["acknowledged_by_user_id"] == api.user_id
    _, resolved, _ = await api.call(
        "PATCH", f"/alerts/{alert.id}", scope="write", json={"status": "resolved"}, expect=200
    )
    assert resolved["resolved_at"] is not None
    await api.call("PATCH", f"/alerts/{alert.id}", scope="write", json={"status": "acknowledged"}, expect=409)
    await api.call("DELETE", f"/alerts/{alert.id}", expect=405)
