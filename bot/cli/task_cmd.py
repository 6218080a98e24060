"""`orchestrator task …` and `orchestrator ranking`: the engine from the command line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bot.cli import echo_json
from bot.errors import OrchestratorError
from bot.settings import Settings, load_settings

TERMINAL = {"completed", "failed", "cancelled"}


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    from bot.db.engine import create_engine, session_factory
    from bot.db.migrate import check_at_head

    url = settings.effective_database_url
    await check_at_head(url)
    engine = create_engine(url, settings=settings.database)
    try:
        yield engine, session_factory(engine)
    finally:
        await engine.dispose()


@click.group()
def task() -> None:
    """Create, inspect and cancel tasks."""


@task.command("run")
@click.argument("request", nargs=-1, required=True)
@click.option("--title", help="A short title (default: the start of the request).")
@click.option("--priority", type=click.IntRange(-100, 100), default=0, show_default=True, help="Higher runs first.")
@click.option("--category", help="code, reasoning, research, writing, summarise, translate, extract, chat, analysis.")
@click.option("--wait", is_flag=True, help="Run the engine here until the task ends, then print the answer.")
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="Seconds to wait with --wait.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def run_task(request: tuple[str, ...], title: str | None, priority: int, category: str | None, wait: bool,
             timeout: float, as_json: bool) -> None:
    """Queue a task; a running daemon (or this command with --wait) plans and executes it."""
    text = " ".join(request).strip()
    settings = load_settings()
    result = asyncio.run(_run(settings, text=text, title=title, priority=priority, category=category,
                              wait=wait, wait_s=timeout))
    if as_json:
        echo_json(result)
        return
    click.echo(f"task {result['id']}: {result['status']}")
    if result.get("result"):
        click.echo(result["result"])
    if result.get("error"):
        click.echo(f"error: {result['error']}", err=True)
    for notice in result.get("notices", []):
        click.echo(f"note: {notice}", err=True)


async def _run(settings: Settings, *, text: str, title: str | None, priority: int, category: str | None,
               wait: bool, wait_s: float) -> dict[str, Any]:
    from bot.engine.runtime import EngineRuntime

    async with _database(settings) as (engine, sessions):
        runtime = EngineRuntime(settings=settings, db_engine=engine, sessions=sessions)
        await runtime.start(run_worker=wait)
        try:
            assert runtime.engine is not None
            submitted = await runtime.engine.submit(title=title or text[:120], description=text if title or
                                                    len(text) > 120 else "", priority=priority, category=category)
            if runtime.worker is not None:
                runtime.worker.wake()
            deadline = time.monotonic() + wait_s
            while wait:
                shown = await _show(sessions, submitted.task_id)
                if shown["status"] in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    raise OrchestratorError(f"task {submitted.task_id} did not finish within {wait_s:.0f} s",
                                            hint=f"it keeps running in the daemon: orchestrator task show "
                                                 f"{submitted.task_id}")
                await asyncio.sleep(0.2)
            shown = await _show(sessions, submitted.task_id)
            shown["notices"] = runtime.notices
            return shown
        finally:
            await runtime.stop()


async def _show(sessions: async_sessionmaker[AsyncSession], task_id: int) -> dict[str, Any]:
    from bot.db.models import AiModel, Subtask, Task

    async with sessions() as session:
        row = await session.get(Task, task_id)
        if row is None:
            raise OrchestratorError(f"there is no task {task_id}", hint="see `orchestrator task list`")
        query = select(Subtask).where(Subtask.task_id == task_id).order_by(Subtask.seq)
        subtasks = (await session.scalars(query)).all()
        names = {m.id: m.model_key for m in (await session.scalars(select(AiModel))).all()}
        return {
            "id": row.id, "title": row.title, "status": str(row.status), "priority": row.priority,
            "category": row.category, "result": row.result, "error": row.error,
            "created_at": row.created_at, "finished_at": row.finished_at,
            "subtasks": [{
                "seq": s.seq, "title": s.title, "status": str(s.status), "category": s.category,
                "executor": names.get(s.executor_model_id or -1), "validator": names.get(s.validator_model_id or -1),
                "tiebreaker": names.get(s.tiebreaker_model_id or -1), "validation_score": s.validation_score,
                "divergence_pct": s.divergence_pct,
                "validation": (s.validation or {}).get("status"),
                "issues": ((s.validation or {}).get("verdict") or {}).get("issues", []),
            } for s in subtasks],
        }


@task.command("show")
@click.argument("task_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_task(task_id: int, as_json: bool) -> None:
    """Show a task, its subtasks, the models that executed and validated them, and the answer."""

    async def go() -> dict[str, Any]:
        async with _database(load_settings()) as (_engine, sessions):
            return await _show(sessions, task_id)

    shown = asyncio.run(go())
    if as_json:
        echo_json(shown)
        return
    click.echo(f"task {shown['id']} [{shown['status']}] {shown['title']}")
    for sub in shown["subtasks"]:
        divergence = "-" if sub["divergence_pct"] is None else f"{sub['divergence_pct']:.0f}%"
        click.echo(f"  {sub['seq']}. [{sub['status']}] {sub['title']}  executor={sub['executor']} "
                   f"validator={sub['validator']} score={sub['validation_score']} divergence={divergence}")
        for issue in sub["issues"][:5]:
            click.echo(f"       - {issue}")
    if shown["result"]:
        click.echo("\n" + shown["result"])
    if shown["error"]:
        click.echo(f"\nerror: {shown['error']}")


@task.command("list")
@click.option("--status", help="Only tasks in this status.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_tasks(status: str | None, limit: int, as_json: bool) -> None:
    """The most recent tasks."""
    from bot.db.models import Task

    async def go() -> list[dict[str, Any]]:
        async with _database(load_settings()) as (_engine, sessions), sessions() as session:
            query = select(Task).order_by(Task.id.desc()).limit(limit)
            if status:
                query = query.where(Task.status == status)
            return [{"id": t.id, "status": str(t.status), "priority": t.priority, "title": t.title,
                     "created_at": t.created_at} for t in (await session.scalars(query)).all()]

    rows = asyncio.run(go())
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:>6}  {row['status']:<10} p{row['priority']:<4} {row['title']}")


@task.command("cancel")
@click.argument("task_id", type=int)
def cancel_task(task_id: int) -> None:
    """Cancel a task's queued and running work."""

    async def go() -> bool:
        from bot.engine.orchestrator import Engine
        from bot.engine.providers.router import Router
        from bot.engine.queue import JobQueue

        settings = load_settings()
        async with _database(settings) as (engine, sessions):
            core = Engine(session_factory=sessions, router=Router(), queue=JobQueue(engine), settings=settings.engine)
            return await core.cancel(task_id)

    click.echo(f"task {task_id} cancelled" if asyncio.run(go()) else f"task {task_id} had already ended")


@click.command()
@click.option("--category", help="Only this category.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ranking(category: str | None, as_json: bool) -> None:
    """Models ranked per category from their measured quality (ai_quality_metrics)."""
    from dataclasses import asdict

    from bot.engine.quality import ranking as load_ranking

    async def go() -> list[dict[str, Any]]:
        async with _database(load_settings()) as (_engine, sessions), sessions() as session:
            return [asdict(row) for row in await load_ranking(session, category=category)]

    rows = asyncio.run(go())
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no model has run yet")
    for row in rows:
        validation = "-" if row["mean_validation_score"] is None else f"{row['mean_validation_score']:.0f}"
        click.echo(f"{row['category']:<12} #{row['rank']:<3} {row['model']:<40} runs={row['runs']:<5} "
                   f"success={row['success_rate']:.0%} validation={validation} "
                   f"tiebreaks={row['tiebreaks_won']}/{row['tiebreaks_won'] + row['tiebreaks_lost']} "
                   f"time={row['mean_time_ms']:.0f}ms")


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Also list workers that stopped.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def workers(show_all: bool, as_json: bool) -> None:
    """The engine's workers (daemons and `orchestrator worker` processes) and whether they are alive.

    A worker is `running` while its heartbeat (every 10 s) is younger than a lease (30 s),
    `silent` past that (killed, or its host is gone: its jobs are reclaimed when their leases
    expire), and `stopped` once it shut down cleanly.
    """
    from bot.engine.queue.roster import list_workers

    async def go() -> list[dict[str, Any]]:
        async with _database(load_settings()) as (_engine, sessions), sessions() as session:
            found = await list_workers(session, include_stopped=show_all)
        return [{"id": w.id, "host": w.host, "pid": w.pid, "concurrency": w.concurrency, "state": w.state,
                 "started_at": w.started_at.isoformat(), "heartbeat_at": w.heartbeat_at.isoformat(),
                 "stopped_at": w.stopped_at.isoformat() if w.stopped_at else None} for w in found]

    listed = asyncio.run(go())
    if as_json:
        echo_json(listed)
        return
    if not listed:
        click.echo("no worker is running" if not show_all else "no worker has run yet")
    for item in listed:
        click.echo(f"{item['state']:<8} {item['id']:<40} host={item['host']} pid={item['pid']} "
                   f"concurrency={item['concurrency']} heartbeat={item['heartbeat_at']}")
