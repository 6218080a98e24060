"""The durable job queue: tasks' work as database state machines that survive crashes.

`JobQueue` holds every state change (enqueue, claim, heartbeat, checkpoint, complete, fail,
reclaim, cancel), each a short transaction, fenced so a result is written exactly once. `Worker`
runs leased jobs concurrently (default 5) with per-provider limits, heartbeats and graceful drain.
See docs/queue.md for the states and guarantees.

Errors (rooted at bot.errors.OrchestratorError):

    QueueError
    ├── LeaseLostError       this attempt no longer owns the job; it must stop writing
    ├── PermanentJobError    a handler's verdict that retrying cannot help (dead-letter now)
    ├── JobPayloadError      a job or checkpoint could not be stored as given
    └── UnknownJobError      no job has that id
"""

from bot.engine.queue.errors import (
    JobPayloadError,
    LeaseLostError,
    PermanentJobError,
    QueueError,
    UnknownJobError,
)
from bot.engine.queue.store import (
    BatchHook,
    Checkpoint,
    ClaimedJob,
    ClaimRequest,
    CommitHook,
    Deferred,
    JobQueue,
    JobSpec,
    JobView,
    Lease,
    PendingWrite,
    ReclaimReport,
)
from bot.engine.queue.worker import (
    DEFAULT_CONCURRENCY,
    Handler,
    JobContext,
    QueueEvent,
    Worker,
    current_job,
    default_worker_id,
    defer_write,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "BatchHook",
    "Checkpoint",
    "ClaimRequest",
    "ClaimedJob",
    "CommitHook",
    "Deferred",
    "Handler",
    "JobContext",
    "JobPayloadError",
    "JobQueue",
    "JobSpec",
    "JobView",
    "Lease",
    "LeaseLostError",
    "PendingWrite",
    "PermanentJobError",
    "QueueError",
    "QueueEvent",
    "ReclaimReport",
    "UnknownJobError",
    "Worker",
    "current_job",
    "default_worker_id",
    "defer_write",
]
