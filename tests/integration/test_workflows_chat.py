"""/workflows in chat against a local LM Studio peer: list, show, and run into a task thread exactly
like /task, with roles, usage errors and pt-BR (SQLite and MariaDB); and the admin API's execute
refusing a run the workflow cannot do."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select, update

from bot.db.models import Task, User, UserIdentity, UserRole
from tests.fakes import FakeLMStudio
from tests.integration.test_api_harness import Api, api, shared_db
from tests.integration.test_chat_engine import close, console_for, wait_for_text
from tests.integration.test_engine import lmstudio, start_engine, wait_task
from tests.integration.test_workflows import NOTE, add_workflow, models, planner_calls, writer_and_template

__all__ = ["api", "lmstudio", "shared_db"]


async def test_list_show_and_run_a_workflow_into_its_thread(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    console, threads = await console_for(runtime, tmp_path)
    try:
        writer_id, template_id = await writer_and_template(runtime)
        workflow_id = await add_workflow(runtime, [
            {"name": "outline", "template_id": template_id, "expected_output": "bullets"},
            {"name": "draft", "specialized_ai_id": writer_id, "instructions": "Write it.", "depends_on": ["outline"]},
        ])
        listing = "\n".join(await console.submit("/workflows"))
        assert f"#{workflow_id} `wf-" in listing and "2 step(s)" in listing
        shown = "\n".join(await console.submit(f"/workflows show {workflow_id}"))
        assert "1. `outline` — template outline-" in shown and "2. `draft` — AI " in shown
        assert "after outline" in shown and "Expected: bullets" in shown
        replies = await console.submit(f'/workflows run {workflow_id} {{"topic": "backups", "audience": "ops"}}')
        assert any("queued" in reply for reply in replies), replies
        await wait_for_text(console, "Final answer")
        thread = [m for m in console.messages if m.thread_id is not None]
        texts = "\n".join(m.text for m in thread)
        assert "Plan by workflow wf-" in texts and "1. outline" in texts and "2. draft" in texts
        assert NOTE in texts and "score 94" in texts
        assert len({m.thread_id for m in thread}) == 1
        async with runtime.sessions() as session:
            task = (await session.scalars(select(Task).where(Task.workflow_id == workflow_id))).one()
        assert str((await wait_task(runtime, task.id)).status) == "completed"
        assert task.description == '{"topic": "backups", "audience": "ops"}'
        assert not planner_calls(lmstudio)
        # A run the workflow cannot do is refused with the reason; nothing is queued.
        refused = "\n".join(await console.submit(f"/workflows run {workflow_id} plain words"))
        assert "cannot run" in refused and "needs values for: audience, topic" in refused
        for line, expected in (("/workflows run x", "id must be a whole number"),
                               ("/workflows run", "Missing id"),
                               ("/workflows show 999999", "no workflow #999999"),
                               ("/workflows run 999999 go", "no workflow #999999"),
                               ("/workflows frobnicate", "/workflows needs one of")):
            joined = "\n".join(await console.submit(line))
            assert expected in joined, (line, joined)
        async with runtime.sessions() as session:
            assert len((await session.scalars(select(Task))).all()) == 1
    finally:
        await close(console, threads, runtime)


async def test_viewers_may_look_but_not_run_and_read_portuguese(
    migrated_db: str, lmstudio: FakeLMStudio, tmp_path: Path
) -> None:
    models(lmstudio)
    runtime = await start_engine(migrated_db, lmstudio, tmp_path)
    console, threads = await console_for(runtime, tmp_path)
    try:
        writer_id, _ = await writer_and_template(runtime)
        workflow_id = await add_workflow(runtime, [{"name": "a", "specialized_ai_id": writer_id, "instructions": "A"}])
        async with runtime.sessions() as session, session.begin():
            user = User(username="vera-wf", role=UserRole.VIEWER, language="pt-BR")
            session.add(user)
            await session.flush()
            await session.execute(update(UserIdentity).where(UserIdentity.platform_user_id == console.sender.user_id)
                                  .values(user_id=user.id))
        listing = "\n".join(await console.submit("/workflows list"))
        assert "Fluxos de trabalho (1):" in listing
        denied = "\n".join(await console.submit(f"/workflows run {workflow_id} go"))
        assert "exige o papel operator" in denied
        help_text = "\n".join(await console.submit("/help workflows"))
        assert "Executa um fluxo de trabalho" in help_text
        async with runtime.sessions() as session:
            assert (await session.scalars(select(Task))).first() is None
    finally:
        await close(console, threads, runtime)


async def test_the_api_refuses_a_run_the_workflow_cannot_do(api: Api) -> None:
    _, template, _ = await api.call("POST", "/templates", json={
        "name": "needs-topic-wf", "body": "About {topic}", "variables": {
            "type": "object", "properties": {"topic": {"type": "string"}}}}, expect=201)
    _, workflow, _ = await api.call("POST", "/workflows", json={"name": "topic-wf", "definition": {"steps": [
        {"name": "s", "template_id": template["id"], "category": "Summary", "expected_output": "a line"}]}},
        expect=201)
    assert workflow["definition"]["steps"][0]["category"] == "summarise"
    status, problem, _ = await api.call("POST", f"/workflows/{workflow['id']}/execute", scope="write",
                                        json={"input": "no variables here"})
    assert status == 422 and "needs values for: topic" in problem["detail"]
    _, run, _ = await api.call("POST", f"/workflows/{workflow['id']}/execute", scope="write",
                               json={"input": '{"topic": "backups"}'}, expect=201)
    assert run["workflow_id"] == workflow["id"] and run["title"] == "topic-wf"
    status, problem, _ = await api.call("POST", "/workflows", json={"name": "bad-cat-wf", "definition": {
        "steps": [{"name": "s", "template_id": template["id"], "category": "astrology"}]}})
    assert status == 422
