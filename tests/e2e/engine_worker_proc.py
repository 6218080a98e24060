"""The engine as a separate process: a worker that plans, executes and validates until killed.

Run with the venv python and ORCH_DATABASE_URL, ORCH_DATA_DIR and ORCH_LMSTUDIO__BASE_URL set;
tests SIGKILL it mid-flight and start it again to prove no work is lost or done twice.
"""

from __future__ import annotations

import asyncio
import os
import signal

from bot.db.engine import create_engine, session_factory
from bot.engine.embeddings import LexicalEmbedder
from bot.engine.runtime import EngineRuntime
from bot.settings import load_settings


async def main() -> None:
    settings = load_settings(engine={"max_concurrency": int(os.environ.get("ENGINE_CONCURRENCY", "20")),
                                     "checkpoint_interval_s": 0.05})
    db = create_engine(settings.effective_database_url)
    runtime = EngineRuntime(settings=settings, db_engine=db, sessions=session_factory(db),
                            embedder=LexicalEmbedder())
    await runtime.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("worker ready", flush=True)
    await stop.wait()
    await runtime.stop()
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
