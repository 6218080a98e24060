"""The one retry loop: failover, cooldown, fallback chains and load spreading over deployments.

A *deployment* is one (provider, model) pair; deployments that serve the same model form a *group*
named after it, and callers ask the router for a group. Provider clients never retry: every retry,
backoff, cooldown and fallback decision is made here, once, in `_Attempts`.

What the router adds to what LiteLLM's router does:

- A stream that breaks after some text continues on the next deployment from the partial output
  (an instruction to continue plus the partial text as an assistant prefix, `continue_from`), and
  the halves are stitched so the consumer sees one stream with nothing repeated and nothing lost.
- Retry-After is honoured exactly: the deployment cools down for that long and is not called
  again before; with no other healthy deployment left the router waits for it (within limits).
- Backoff only applies when calling a deployment that already failed during this call; moving to a
  fresh deployment is immediate.

Errors raised here (beyond what providers raise):

    ProviderUnavailableError (bot.engine.providers.port)
    └── NoDeploymentAvailableError     every deployment of every group failed, cools down or is absent
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from bot.engine.providers.port import (
    ChatDelta,
    ChatMessage,
    ChatRequest,
    ChatResult,
    LLMProvider,
    ModelDoesNotFitError,
    ModelNotFoundError,
    ProviderError,
    ProviderHTTPError,
    ProviderProtocolError,
    ProviderTimeoutError,
    ProviderUnavailableError,
    StreamInterruptedError,
    Usage,
)
from bot.logs import get_logger

log = get_logger(__name__)

CONTINUE_INSTRUCTION = (
    "Your answer was cut off. Continue it exactly where it stopped: do not repeat any of it, do "
    "not add a preamble, do not comment on the interruption."
)


class NoDeploymentAvailableError(ProviderUnavailableError):
    """No deployment could answer: all failed, are cooling down, or none serves the model."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model on one provider; `group` is the name callers ask for (the model key by default)."""

    provider: LLMProvider
    model: str
    group: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"deployment weight must be positive, got {self.weight}")

    @property
    def id(self) -> str:
        """A stable name for logs and metrics: `<provider>/<model>`."""
        return f"{self.provider.name}/{self.model}"

    @property
    def group_name(self) -> str:
        """The group this deployment serves."""
        return self.group or self.model


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Retry, cooldown and timeout policy; the defaults suit local servers on a LAN."""

    retries_per_group: int = 2
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    # Longer Retry-After / cooldown waits than this make the router give up instead of waiting.
    max_wait_s: float = 60.0
    cooldown_s: float = 5.0
    failure_window_s: float = 60.0
    allowed_fails: int = 3
    failure_ratio: float = 0.5
    first_token_timeout_s: float | None = 60.0
    total_timeout_s: float | None = 600.0
    fallbacks: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # Continuation stitching: shortest tail repetition that is removed, and how far back to look.
    min_overlap_chars: int = 6
    overlap_window_chars: int = 4096

    def __post_init__(self) -> None:
        if self.first_token_timeout_s is not None and self.first_token_timeout_s <= 0:
            raise ValueError("first_token_timeout_s must be positive")
        if self.retries_per_group < 0 or self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("retries and backoff must not be negative")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.allowed_fails < 1:
            raise ValueError("allowed_fails must be at least 1")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One attempt on one deployment, handed to the usage hook (credit_usage, metrics)."""

    deployment: str
    provider: str
    model: str
    group: str
    ok: bool
    latency_ms: float
    usage: Usage
    error: str | None = None
    streamed: bool = False
    continued: bool = False
    time_to_first_token_ms: float | None = None


CallHook = Callable[[CallRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeploymentHealth:
    """What the router knows about a deployment right now (for `providers list` and the API)."""

    deployment: str
    group: str
    in_flight: int
    calls_in_window: int
    failures_in_window: int
    cooling_down_s: float


@dataclass(slots=True)
class _State:
    in_flight: int = 0
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)
    # Failed entries of `outcomes`, kept in step with it: every model choice reads the health of
    # every deployment, and counting the window there cost more than the rest of the choice.
    failures: int = 0
    cooldown_until: float = 0.0
    last_picked: int = 0  # the router's pick counter when last chosen (0: never)


Action = Literal["raise", "next", "retry"]


def classify(err: ProviderError) -> Action:
    """What the loop does after `err`: give up, move to another deployment, or retry (with backoff)."""
    if isinstance(err, ModelNotFoundError | ModelDoesNotFitError | ProviderProtocolError):
        return "next"  # this deployment cannot serve the request; another may
    if isinstance(err, ProviderHTTPError):
        if err.retryable:
            return "retry"
        if err.status in (401, 403, 404):
            return "next"  # credentials or model missing on this server only
        return "raise"  # 400/413/422…: the request itself is wrong, every server would refuse it
    if err.retryable:
        return "retry"
    return "raise"


def continuation_messages(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation plus the instruction to continue; the partial answer itself travels as
    `ChatRequest.continue_from`, which each client renders as a trailing assistant prefix."""
    return [*messages, ChatMessage(role="user", content=CONTINUE_INSTRUCTION)]


class Stitcher:
    """Joins a continuation to the text already shown, removing what the new model repeated.

    The continuation is held back only while its beginning could still be a repetition of the tail
    of the text already emitted (it occurs in that tail and does not reach its end yet); then the
    longest suffix/prefix overlap of at least `min_overlap` characters is cut (or the whole earlier
    text, when the model started over). Text after the decision passes straight through.
    """

    def __init__(self, emitted: str, *, min_overlap: int = 6, window: int = 4096) -> None:
        self._tail = emitted[-window:]
        self._is_whole = len(emitted) <= window
        self._min_overlap = min_overlap
        self._window = window
        self._buffer = ""
        self._decided = not emitted

    def feed(self, text: str) -> str:
        """Text safe to show now (possibly empty while undecided)."""
        if self._decided:
            return text
        self._buffer += text
        if self._could_grow() and len(self._buffer) < self._window:
            return ""
        return self._decide()

    def flush(self) -> str:
        """Whatever is held back, decided with what arrived (the stream ended or broke)."""
        return "" if self._decided else self._decide()

    def _could_grow(self) -> bool:
        tail, buffer = self._tail, self._buffer
        index = tail.find(buffer)
        while index != -1:
            if index + len(buffer) < len(tail):
                return True
            index = tail.find(buffer, index + 1)
        return False

    def _decide(self) -> str:
        self._decided = True
        buffer, tail = self._buffer, self._tail
        self._buffer = ""
        for size in range(min(len(buffer), len(tail)), 0, -1):
            if not tail.endswith(buffer[:size]):
                continue
            if size >= self._min_overlap or (self._is_whole and size == len(tail)):
                return buffer[size:]
            break
        return buffer


class _Attempts:
    """The single retry loop, as a state machine: `next()` says which deployment to try now.

    Within a group: fresh deployments first (no wait), then already-failed ones after a full-jitter
    backoff (Retry-After is its floor). A group with nothing healthy hands over to the next group
    of the fallback chain; only the last group waits for a cooldown to end, and only when the wait
    is under `max_wait_s` and inside the total deadline.
    """

    def __init__(self, router: Router, group: str, deadline: float | None) -> None:
        self._router = router
        self._plan = router.group_plan(group)
        self._deadline = deadline
        self._group_index = 0
        self._tried: dict[str, int] = {}
        self._excluded: set[str] = set()  # cannot serve this request at all (unknown model, 401…)
        self._attempts_in_group = 0
        self._current: Deployment | None = None
        self._stopped = False
        self.last_error: ProviderError | None = None
        self.attempted: list[str] = []

    async def next(self) -> Deployment | None:
        """The deployment to call next, or None when the loop is over."""
        router = self._router
        while not self._stopped and self._group_index < len(self._plan):
            if self._deadline is not None and router._clock() >= self._deadline:
                self._stopped = True
                self.last_error = ProviderTimeoutError("the total timeout passed before any deployment answered")
                break
            group = self._plan[self._group_index]
            if self._attempts_in_group > router.config.retries_per_group:
                self._next_group()
                continue
            deployment = router._pick(group, self._tried, self._excluded)
            waited = 0.0
            if deployment is None:
                wait = router._soonest_available(group, self._excluded)
                is_last_group = self._group_index == len(self._plan) - 1
                if wait is None or not is_last_group or not self._may_wait(wait):
                    self._next_group()  # nothing here can answer soon: fall back
                    continue
                log.info("router.waiting_for_cooldown", group=group, wait_s=round(wait, 3))
                await asyncio.sleep(wait)
                waited = wait
                deployment = router._pick(group, self._tried, self._excluded)
                if deployment is None:
                    self._next_group()
                    continue
            failures_here = self._tried.get(deployment.id, 0)
            if failures_here:
                delay = max(0.0, router._backoff(failures_here, self.last_error) - waited)
                if not self._may_wait(delay):
                    self._next_group()
                    continue
                if delay > 0:
                    await asyncio.sleep(delay)
            self._attempts_in_group += 1
            self.attempted.append(deployment.id)
            self._current = deployment
            return deployment
        return None

    def fail(self, err: ProviderError) -> None:
        """The deployment `next()` gave failed with `err`."""
        self.last_error = err
        if self._current is not None:
            self._tried[self._current.id] = self._tried.get(self._current.id, 0) + 1
        action = classify(err)
        if action == "raise":
            self._stopped = True
        elif action == "next" and self._current is not None:
            self._excluded.add(self._current.id)

    def _next_group(self) -> None:
        self._group_index += 1
        self._tried = {}
        self._attempts_in_group = 0

    def _may_wait(self, seconds: float) -> bool:
        if seconds > self._router.config.max_wait_s:
            return False
        if self._deadline is None:
            return True
        return self._router._clock() + seconds < self._deadline

    def exhausted_error(self, group: str) -> ProviderError:
        """The error to raise once the loop ran out of deployments."""
        err = self.last_error
        if err is not None and classify(err) == "raise":
            return err
        if self._deadline is not None and self._router._clock() >= self._deadline:
            detail = f"; last error: {err.message}" if err is not None else ""
            return ProviderTimeoutError(
                f"no complete answer for model {group!r} within the total timeout{detail}",
                hint="raise the timeout or use a faster model",
            )
        tried = ", ".join(dict.fromkeys(self.attempted)) or "none"
        detail = f"; last error: {err.message}" if err is not None else ""
        if not self._router.deployments(group) and not self.attempted:
            detail = "; no provider serves it"
        return NoDeploymentAvailableError(
            f"no deployment could answer for model {group!r} (tried: {tried}){detail}",
            hint="check `orchestrator providers list` and the servers' logs, or add a fallback model",
        )


class Router:
    """Sends each request to a healthy deployment of the asked-for group, failing over on errors."""

    def __init__(
        self,
        *,
        deployments: Sequence[Deployment] = (),
        config: RouterConfig | None = None,
        on_call: CallHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        # Public so a caller can put an observer in front of the usage hook (bench.engine times
        # model calls this way, to the microsecond; execution_logs keeps whole milliseconds).
        self.on_call = on_call
        self._clock = clock
        self._rng = rng or random.Random()  # jitter only; not security relevant
        # A counter, not the clock: two picks within one clock tick still rotate in order.
        self._picks = itertools.count(1)
        self._groups: dict[str, list[Deployment]] = {}
        self._names: frozenset[str] = frozenset()
        self._states: dict[str, _State] = {}
        # Calls each provider may have at once (its parallel slots); providers not named: no cap.
        self._slots: dict[str, asyncio.Semaphore] = {}
        for deployment in deployments:
            self.add(deployment)

    # -- membership ------------------------------------------------------------------------------

    def add(self, deployment: Deployment) -> None:
        """Serve `deployment.group_name` also from this deployment (idempotent)."""
        members = self._groups.setdefault(deployment.group_name, [])
        if all(existing.id != deployment.id for existing in members):
            members.append(deployment)
        self._states.setdefault(deployment.id, _State())
        self._names = frozenset(self._groups)

    def remove(self, deployment_id: str) -> None:
        """Stop routing to a deployment (e.g. its model vanished)."""
        for group, members in list(self._groups.items()):
            self._groups[group] = [d for d in members if d.id != deployment_id]
            if not self._groups[group]:
                del self._groups[group]
        self._names = frozenset(self._groups)

    def groups(self) -> dict[str, list[Deployment]]:
        """Every group and its deployments."""
        return {name: list(members) for name, members in self._groups.items()}

    def group_names(self) -> frozenset[str]:
        """The routable groups: what every model choice checks, so kept rather than copied."""
        return self._names

    def deployments(self, group: str) -> tuple[Deployment, ...]:
        """The deployments serving `group` (none when it is not routable)."""
        return tuple(self._groups.get(group, ()))

    def group_plan(self, group: str) -> list[str]:
        """The group followed by its fallback chain (each group once, in order)."""
        plan = [group, *self.config.fallbacks.get(group, ())]
        return list(dict.fromkeys(plan))

    def health(self) -> list[DeploymentHealth]:
        """A snapshot of every deployment's load, recent failures and cooldown."""
        now = self._clock()
        rows = []
        for group, members in self._groups.items():
            for deployment in members:
                state = self._state(deployment)
                self._trim(state, now)
                rows.append(
                    DeploymentHealth(
                        deployment=deployment.id,
                        group=group,
                        in_flight=state.in_flight,
                        calls_in_window=len(state.outcomes),
                        failures_in_window=state.failures,
                        cooling_down_s=max(0.0, state.cooldown_until - now),
                    )
                )
        return rows

    def limit_providers(self, limits: Mapping[str, int]) -> None:
        """At most `limits[name]` calls at once to each named provider (`ai_providers.max_concurrency`).

        A server runs only so many requests in parallel (LM Studio's and llama.cpp's parallel
        slots, Ollama's OLLAMA_NUM_PARALLEL); more would queue inside it, invisible to deadlines
        and to load balancing. Calls past the cap wait here for a slot, within their own total
        timeout, and count as that deployment's load meanwhile. A limit of 0 or less, or a
        provider not named, means no cap. Calls already holding a slot keep it.
        """
        self._slots = {name: asyncio.Semaphore(limit) for name, limit in limits.items() if limit > 0}

    async def _take_slot(self, deployment: Deployment, deadline: float | None) -> asyncio.Semaphore | None:
        """Wait for one of the provider's slots (None: it has no cap); the caller releases it."""
        slot = self._slots.get(deployment.provider.name)
        if slot is None:
            return None
        remaining = self._remaining(deadline)
        try:
            async with asyncio.timeout(remaining):
                await slot.acquire()
        except TimeoutError as err:
            raise ProviderTimeoutError(
                f"{deployment.id}: every slot of {deployment.provider.name} stayed busy for {remaining:.1f} s"
            ) from err
        return slot

    # -- calls -----------------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResult:
        """One whole answer from the first deployment that gives one."""
        deadline = self._deadline(request)
        attempts = _Attempts(self, request.model, deadline)
        while (deployment := await attempts.next()) is not None:
            state = self._state(deployment)
            state.in_flight += 1
            started = self._clock()
            slot: asyncio.Semaphore | None = None
            try:
                slot = await self._take_slot(deployment, deadline)
                started = self._clock()  # the model's time, not the wait for a slot
                remaining = self._remaining(deadline)
                per_attempt = replace(request, model=deployment.model, timeout_s=remaining)
                try:
                    async with asyncio.timeout(remaining):
                        result = await deployment.provider.chat(per_attempt)
                except TimeoutError as err:
                    raise ProviderTimeoutError(
                        f"{deployment.id} gave no answer within the total timeout of {remaining:.1f} s"
                    ) from err
            except ProviderError as err:
                self._record(deployment, ok=False, err=err)
                attempts.fail(err)
                await self._report(deployment, ok=False, started=started, usage=Usage(), err=err)
            else:
                self._record(deployment, ok=True)
                await self._report(
                    deployment,
                    ok=True,
                    started=started,
                    usage=result.usage,
                    ttft=result.time_to_first_token_ms,
                )
                return result
            finally:
                state.in_flight -= 1
                if slot is not None:
                    slot.release()
        raise attempts.exhausted_error(request.model)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[ChatDelta]:
        """The answer as one stream, continued on another deployment if one breaks midway."""
        deadline = self._deadline(request)
        attempts = _Attempts(self, request.model, deadline)
        emitted = ""
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        while (deployment := await attempts.next()) is not None:
            continued = bool(emitted)
            stitcher = Stitcher(
                emitted,
                min_overlap=self.config.min_overlap_chars,
                window=self.config.overlap_window_chars,
            )
            raw_text = ""
            final: ChatDelta | None = None
            failure: ProviderError | None = None
            held = ""
            state = self._state(deployment)
            state.in_flight += 1
            started = self._clock()
            slot: asyncio.Semaphore | None = None
            try:
                slot = await self._take_slot(deployment, deadline)
                started = self._clock()  # the model's time, not the wait for a slot
                stream = self._guarded(deployment, self._stream_request(request, deployment, emitted), deadline)
                async with contextlib.aclosing(stream):
                    async for delta in stream:
                        raw_text += delta.text
                        shown = stitcher.feed(delta.text)
                        if delta.done:
                            shown += stitcher.flush()
                            final = delta
                        if shown:
                            emitted += shown
                            yield ChatDelta(text=shown)
                        if delta.done:
                            break
            except ProviderError as err:
                failure = err
                if isinstance(err, StreamInterruptedError) and err.partial_text.startswith(raw_text):
                    # the client may hold text it had not yet handed out as deltas
                    held = stitcher.feed(err.partial_text[len(raw_text) :])
                held += stitcher.flush()
            finally:
                state.in_flight -= 1
                if slot is not None:  # the stream is closed by now (aclosing above)
                    slot.release()
            if failure is not None:
                emitted += held
                self._record(deployment, ok=False, err=failure)
                attempts.fail(failure)
                log.info("router.stream_failed", deployment=deployment.id, error=failure.message,
                         emitted_chars=len(emitted))  # fmt: skip
                await self._report(deployment, ok=False, started=started, usage=Usage(), err=failure,
                                   streamed=True, continued=continued)  # fmt: skip
                if held:
                    yield ChatDelta(text=held)
                continue
            if final is None:  # the stream ended without its closing event
                held = stitcher.flush()
                if held:
                    emitted += held
                    yield ChatDelta(text=held)
                final = ChatDelta(text="", done=True)
            self._record(deployment, ok=True)
            usage = final.usage or Usage()
            if usage.prompt_tokens is not None:
                prompt_tokens = (prompt_tokens or 0) + usage.prompt_tokens
            if usage.completion_tokens is not None:
                completion_tokens = (completion_tokens or 0) + usage.completion_tokens
            await self._report(deployment, ok=True, started=started, usage=usage, streamed=True,
                               continued=continued, ttft=final.time_to_first_token_ms)  # fmt: skip
            yield ChatDelta(
                text="",
                done=True,
                finish_reason=final.finish_reason,
                usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens),
                time_to_first_token_ms=final.time_to_first_token_ms,
                tokens_per_s=final.tokens_per_s,
                elapsed_ms=final.elapsed_ms,
            )
            return
        raise attempts.exhausted_error(request.model)

    # -- internals -------------------------------------------------------------------------------

    def _stream_request(self, request: ChatRequest, deployment: Deployment, emitted: str) -> ChatRequest:
        first_token = request.first_token_timeout_s or self.config.first_token_timeout_s
        if not emitted:
            return replace(request, model=deployment.model, first_token_timeout_s=first_token)
        return replace(
            request,
            model=deployment.model,
            messages=continuation_messages(request.messages),
            continue_from=emitted,
            first_token_timeout_s=first_token,
        )

    async def _guarded(
        self, deployment: Deployment, request: ChatRequest, deadline: float | None
    ) -> AsyncGenerator[ChatDelta, None]:
        """The provider's stream with the first-token and total deadlines enforced."""
        iterator = deployment.provider.stream_chat(request).__aiter__()
        first_token_s = request.first_token_timeout_s
        waiting_first = True
        try:
            while True:
                timeout = self._remaining(deadline)
                is_first_token_wait = False
                if waiting_first and first_token_s is not None and (timeout is None or first_token_s < timeout):
                    timeout, is_first_token_wait = first_token_s, True
                try:
                    # A timeout scope, not wait_for: wait_for ran every delta in a task of its own,
                    # a task per token (about twice this scope's cost per delta, measured).
                    async with asyncio.timeout(timeout):
                        delta = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError as err:
                    what = "first token" if is_first_token_wait else "end of the answer"
                    raise ProviderTimeoutError(f"{deployment.id}: no {what} within {timeout:.1f} s") from err
                if delta.text or delta.done:
                    waiting_first = False
                yield delta
        finally:
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                await closer()

    def _deadline(self, request: ChatRequest) -> float | None:
        total = request.timeout_s or self.config.total_timeout_s
        return None if total is None else self._clock() + total

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise ProviderTimeoutError("the total timeout passed before an answer was complete")
        return remaining

    def _state(self, deployment: Deployment) -> _State:
        # Not setdefault: that built a _State (and its deque) on every call, several per model choice.
        state = self._states.get(deployment.id)
        if state is None:
            state = self._states[deployment.id] = _State()
        return state

    def _cooling(self, deployment: Deployment, now: float) -> bool:
        return self._state(deployment).cooldown_until > now

    def _pick(self, group: str, tried: Mapping[str, int], excluded: set[str]) -> Deployment | None:
        """Least loaded (in-flight per weight) healthy deployment, preferring ones not yet tried."""
        now = self._clock()
        healthy = [
            d for d in self._groups.get(group, ()) if d.id not in excluded and not self._cooling(d, now)
        ]
        if not healthy:
            return None
        # The least-failed deployments for this request; among equals, load and then the one picked
        # longest ago win, so a retry rotates to another server instead of re-asking the one that failed.
        fewest = min(tried.get(d.id, 0) for d in healthy)
        pool = [d for d in healthy if tried.get(d.id, 0) == fewest]

        def load(deployment: Deployment) -> tuple[float, float, float]:
            state = self._state(deployment)
            return ((state.in_flight + 1) / deployment.weight, state.last_picked, self._rng.random())

        chosen = pool[0] if len(pool) == 1 else min(pool, key=load)
        self._state(chosen).last_picked = next(self._picks)
        return chosen

    def _soonest_available(self, group: str, excluded: set[str]) -> float | None:
        now = self._clock()
        waits = [
            self._state(d).cooldown_until - now for d in self._groups.get(group, ()) if d.id not in excluded
        ]
        return max(0.0, min(waits)) if waits else None

    def _backoff(self, failures: int, err: ProviderError | None) -> float:
        """Full jitter: uniform(0, min(cap, base × 2^(n-1))); Retry-After is a floor when given."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (failures - 1))
        delay = self._rng.uniform(0, ceiling)
        retry_after = getattr(err, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            delay = max(delay, float(retry_after))
        return delay

    def _trim(self, state: _State, now: float) -> None:
        horizon = now - self.config.failure_window_s
        outcomes = state.outcomes
        while outcomes and outcomes[0][0] < horizon:
            if not outcomes.popleft()[1]:
                state.failures -= 1

    def _record(self, deployment: Deployment, *, ok: bool, err: ProviderError | None = None) -> None:
        now = self._clock()
        state = self._state(deployment)
        state.outcomes.append((now, ok))
        if not ok:
            state.failures += 1
        self._trim(state, now)
        if ok or err is None:
            return
        retry_after = getattr(err, "retry_after", None)
        cooldown = 0.0
        reason = ""
        if isinstance(retry_after, int | float) and retry_after > 0:
            cooldown, reason = float(retry_after), "retry-after"
        elif isinstance(err, ProviderHTTPError) and err.status == 429:
            cooldown, reason = self.config.cooldown_s, "rate limited"
        elif classify(err) == "next":
            cooldown, reason = self.config.cooldown_s, "cannot serve"
        else:
            failures = state.failures
            ratio = failures / len(state.outcomes)
            if failures >= self.config.allowed_fails and ratio > self.config.failure_ratio:
                cooldown, reason = self.config.cooldown_s, f"{failures}/{len(state.outcomes)} failed"
        if cooldown > 0:
            state.cooldown_until = max(state.cooldown_until, now + cooldown)
            log.warning("router.cooldown", deployment=deployment.id, seconds=round(cooldown, 3), reason=reason)

    async def _report(
        self,
        deployment: Deployment,
        *,
        ok: bool,
        started: float,
        usage: Usage,
        err: ProviderError | None = None,
        streamed: bool = False,
        continued: bool = False,
        ttft: float | None = None,
    ) -> None:
        if self.on_call is None:
            return
        record = CallRecord(
            deployment=deployment.id,
            provider=deployment.provider.name,
            model=deployment.model,
            group=deployment.group_name,
            ok=ok,
            latency_ms=(self._clock() - started) * 1000,
            usage=usage,
            error=None if err is None else err.message,
            streamed=streamed,
            continued=continued,
            time_to_first_token_ms=ttft,
        )
        try:
            await self.on_call(record)
        except Exception:  # boundary: a failing usage hook must never fail the model call itself
            log.exception("router.usage_hook_failed", deployment=deployment.id)
