"""Two claimer processes race over 10,000 jobs: no job is claimed twice and none is lost."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from bot.db.engine import create_engine
from bot.engine.queue import JobQueue, JobSpec
from tests.e2e.queue_worker_proc import (  # noqa: F401  (fixtures)
    queue_mariadb_shared,
    queue_sqlite_template,
    queue_url,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
JOBS = 10_000


async def test_two_claimers_never_share_a_job(queue_url: str, tmp_path: Path) -> None:  # noqa: F811
    engine = create_engine(queue_url)
    queue = JobQueue(engine)
    try:
        ids = await queue.enqueue_many(
            [JobSpec(kind="bulk", idempotency_key=f"bulk:{n}", priority=n % 7) for n in range(JOBS)]
        )
        assert len(ids) == JOBS
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        outputs = [tmp_path / "claims-a.txt", tmp_path / "claims-b.txt"]
        claimers = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.e2e.queue_worker_proc",
                "claim",
                "--url",
                queue_url,
                "--name",
                f"claimer-{name}",
                "--out",
                str(out),
                "--batch",
                "100",
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for name, out in zip("ab", outputs, strict=True)
        ]
        # Both claim from the same moment: on a fast machine the first to finish importing
        # drained all 10,000 jobs before the other was up, and the test saw one claimer.
        for claimer in claimers:
            assert claimer.stdout is not None
            ready = await asyncio.wait_for(claimer.stdout.readline(), timeout=60)
            assert ready.strip() == b"ready", ready
        for claimer in claimers:
            assert claimer.stdin is not None
            claimer.stdin.write(b"go\n")
        results = await asyncio.wait_for(asyncio.gather(*(claimer.communicate() for claimer in claimers)), timeout=240)
        for claimer, (_stdout, stderr) in zip(claimers, results, strict=True):
            assert claimer.returncode == 0, stderr.decode()[-2000:]

        claims = Counter[int]()
        per_claimer = []
        for out in outputs:
            lines = out.read_text().split()
            claimed = [int(job_id) for job_id in lines[0::2]]
            fences = {int(fence) for fence in lines[1::2]}
            assert fences == {1}  # every job was claimed exactly once, ever
            claims.update(claimed)
            per_claimer.append(len(claimed))
        assert max(claims.values()) == 1, "a job was claimed twice"
        assert set(claims) == set(ids.values()), "a job was lost"
        assert all(count > 0 for count in per_claimer), f"one claimer got no work: {per_claimer}"
        assert await queue.counts() == {"succeeded": JOBS}
    finally:
        await engine.dispose()
