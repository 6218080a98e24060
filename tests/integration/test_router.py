"""The router against real provider clients and wire-level fake servers.

Retries and backoff, Retry-After, cooldown after 500 bursts, fallback chains, load spreading,
first-token timeout, and a broken stream continued on another deployment without seams.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from bot.engine.providers._http import HttpTimeouts
from bot.engine.providers.openai_compat import OpenAICompatProvider
from bot.engine.providers.port import ChatMessage, ChatRequest, ProviderHTTPError, ProviderTimeoutError
from bot.engine.providers.router import (
    CONTINUE_INSTRUCTION,
    CallRecord,
    Deployment,
    NoDeploymentAvailableError,
    Router,
    RouterConfig,
    Stitcher,
)
from tests.fakes.openai_compat import FakeOpenAICompat

CHAT = "/v1/chat/completions"
ANSWER = "Alpha beta gamma delta epsilon zeta eta theta"


class ManualClock:
    """Time that moves only when the test says so (cooldown windows without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def servers() -> AsyncIterator[tuple[FakeOpenAICompat, FakeOpenAICompat]]:
    async with FakeOpenAICompat(router_mode=True) as first, FakeOpenAICompat(router_mode=True) as second:
        yield first, second


_open_clients: list[OpenAICompatProvider] = []


@pytest.fixture(autouse=True)
async def close_clients() -> AsyncIterator[None]:
    yield
    while _open_clients:
        await _open_clients.pop().aclose()


def provider(name: str, fake: FakeOpenAICompat) -> OpenAICompatProvider:
    client = OpenAICompatProvider(name=name, base_url=fake.url, timeouts=HttpTimeouts(connect_s=2, total_s=20))
    _open_clients.append(client)
    return client


def request(model: str = "m", **extra: object) -> ChatRequest:
    return ChatRequest(model=model, messages=[ChatMessage(role="user", content="Say the letters.")], **extra)  # type: ignore[arg-type]


async def collect(router: Router, req: ChatRequest) -> tuple[str, list[str]]:
    pieces = [delta.text async for delta in router.stream_chat(req)]
    return "".join(pieces), pieces


async def test_retries_500_with_backoff_then_succeeds(servers: tuple[FakeOpenAICompat, FakeOpenAICompat]) -> None:
    fake, _ = servers
    fake.script("m", answer="fine", fail_status=500, fail_times=2)
    client = provider("a", fake)
    router = Router(
        deployments=[Deployment(provider=client, model="m")],
        config=RouterConfig(retries_per_group=2, backoff_base_s=0.01, allowed_fails=5),
    )
    result = await router.chat(request())
    assert result.text == "fine"
    assert len(fake.calls(CHAT)) == 3


async def test_retry_after_is_honoured_on_the_only_deployment(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    fake, _ = servers
    fake.script("m", answer="later", fail_status=429, fail_times=1, retry_after="1")
    client = provider("a", fake)
    router = Router(deployments=[Deployment(provider=client, model="m")], config=RouterConfig(backoff_base_s=0))
    result = await router.chat(request())
    first, second = fake.calls(CHAT)
    assert result.text == "later"
    assert second.at - first.at >= 0.95


async def test_rate_limited_deployment_is_skipped_while_another_is_healthy(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    busy, free = servers
    busy.script("m", answer="busy", fail_status=429, fail_times=-1, retry_after="30")
    free.script("m", answer="free")
    clients = [provider("busy", busy), provider("free", free)]
    router = Router(deployments=[Deployment(provider=c, model="m") for c in clients])
    started = time.monotonic()
    answers = [(await router.chat(request())).text for _ in range(4)]
    elapsed = time.monotonic() - started
    assert answers == ["free"] * 4
    assert len(busy.calls(CHAT)) == 1  # cooled down for the Retry-After, not hammered
    assert elapsed < 5  # moving to a fresh deployment does not wait


async def test_500_burst_puts_the_deployment_in_cooldown_until_it_expires(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    broken, healthy = servers
    broken.script("m", answer="broken", fail_status=500, fail_times=-1)
    healthy.script("m", answer="healthy")
    clock = ManualClock()
    clients = [provider("broken", broken), provider("healthy", healthy)]
    records: list[CallRecord] = []

    async def on_call(record: CallRecord) -> None:
        records.append(record)

    router = Router(
        deployments=[Deployment(provider=c, model="m") for c in clients],
        config=RouterConfig(allowed_fails=2, failure_ratio=0.5, cooldown_s=30, backoff_base_s=0),
        clock=clock,
        on_call=on_call,
    )
    for _ in range(6):
        assert (await router.chat(request())).text == "healthy"
    assert len(broken.calls(CHAT)) == 2
    cooling = {row.deployment: row.cooling_down_s for row in router.health()}
    assert cooling["broken/m"] == 30
    assert cooling["healthy/m"] == 0

    clock.now += 31  # the cooldown ends: the broken server gets one more chance
    broken.script("m", fail_times=0)
    answers = {(await router.chat(request())).text for _ in range(4)}
    assert answers == {"broken", "healthy"}
    failed = [r for r in records if not r.ok]
    assert {r.deployment for r in failed} == {"broken/m"}
    assert all("HTTP 500" in (r.error or "") for r in failed)


async def test_failures_leave_the_health_window_as_they_age(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    fake, _ = servers
    fake.script("m", answer="fine", fail_status=500, fail_times=2)
    clock = ManualClock()
    router = Router(
        deployments=[Deployment(provider=provider("a", fake), model="m")],
        config=RouterConfig(retries_per_group=2, backoff_base_s=0, allowed_fails=3, failure_ratio=0.5,
                            failure_window_s=60, cooldown_s=30, max_wait_s=1),
        clock=clock,
    )
    assert (await router.chat(request())).text == "fine"
    (row,) = router.health()
    assert (row.calls_in_window, row.failures_in_window, row.cooling_down_s) == (3, 2, 0)

    clock.now += 61  # both failures age out of the window
    (row,) = router.health()
    assert (row.calls_in_window, row.failures_in_window) == (0, 0)

    # Two new failures: counting the aged-out ones too would make 4 ≥ allowed_fails and cool it down.
    fake.script("m", answer="again", fail_status=500, fail_times=2)
    assert (await router.chat(request())).text == "again"
    (row,) = router.health()
    assert (row.calls_in_window, row.failures_in_window, row.cooling_down_s) == (3, 2, 0)

    clock.now += 30  # half a window later the three calls still count: one more failure is 3 of 4
    fake.script("m", answer="late", fail_status=500, fail_times=-1)
    with pytest.raises(NoDeploymentAvailableError):
        await router.chat(request())
    (row,) = router.health()
    assert (row.calls_in_window, row.failures_in_window, row.cooling_down_s) == (4, 3, 30)


async def test_fallback_chain_moves_to_the_next_model(servers: tuple[FakeOpenAICompat, FakeOpenAICompat]) -> None:
    fake, _ = servers
    fake.script("big", answer="big", fail_status=503, fail_times=-1)
    fake.script("small", answer="small")
    client = provider("a", fake)
    router = Router(
        deployments=[Deployment(provider=client, model="big"), Deployment(provider=client, model="small")],
        config=RouterConfig(retries_per_group=1, backoff_base_s=0, fallbacks={"big": ["small"]}),
    )
    result = await router.chat(request("big"))
    assert result.text == "small"
    assert [call.body["model"] for call in fake.calls(CHAT)] == ["big", "big", "small"]


async def test_bad_request_is_not_retried_or_sent_elsewhere(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    first, second = servers
    first.script("m", fail_status=400, fail_times=-1)
    second.script("m", answer="x")
    clients = [provider("a", first), provider("b", second)]
    weighted = [Deployment(provider=c, model="m", weight=w) for c, w in zip(clients, (10, 1), strict=True)]
    router = Router(deployments=weighted)
    with pytest.raises(ProviderHTTPError) as caught:
        await router.chat(request())
    assert caught.value.status == 400
    assert len(first.calls(CHAT)) == 1
    assert second.calls(CHAT) == []


async def test_server_without_the_model_is_skipped_without_waiting(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    empty, serving = servers
    empty.script("other", answer="wrong model")
    serving.script("m", answer="right")
    clients = [provider("empty", empty), provider("serving", serving)]
    weighted = [Deployment(provider=c, model="m", weight=w) for c, w in zip(clients, (10, 1), strict=True)]
    router = Router(deployments=weighted)
    assert (await router.chat(request())).text == "right"

    lonely = Router(deployments=[weighted[0]], config=RouterConfig(cooldown_s=30))
    started = time.monotonic()
    with pytest.raises(NoDeploymentAvailableError, match="not found"):
        await lonely.chat(request())
    assert time.monotonic() - started < 5  # not waiting out a cooldown to ask again
    assert len(empty.calls(CHAT)) == 2


async def test_concurrent_requests_spread_over_servers_of_the_same_model(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    first, second = servers
    for fake in servers:
        fake.script("m", answer="a b c", first_token_delay_s=0.2)
    clients = [provider("a", first), provider("b", second)]
    router = Router(deployments=[Deployment(provider=c, model="m") for c in clients])
    results = await asyncio.gather(*(router.chat(request()) for _ in range(6)))
    assert {r.text for r in results} == {"a b c"}
    assert len(first.calls(CHAT)) == 3
    assert len(second.calls(CHAT)) == 3


async def test_a_provider_never_gets_more_calls_at_once_than_its_slots(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    fake, _ = servers
    delay = 0.3
    fake.script("m", answer="a b c", first_token_delay_s=delay)
    router = Router(deployments=[Deployment(provider=provider("a", fake), model="m")])
    router.limit_providers({"a": 2})
    results = await asyncio.gather(*(router.chat(request()) for _ in range(4)),
                                   *(collect(router, request()) for _ in range(2)))
    assert [r.text for r in results[:4]] == ["a b c"] * 4 and [r[0] for r in results[4:]] == ["a b c"] * 2
    arrivals = sorted(call.at for call in fake.calls(CHAT))
    assert len(arrivals) == 6
    # Two slots: no three requests (whole answers or streams) reach the server within one answer's time.
    assert all(arrivals[i + 2] - arrivals[i] >= delay * 0.9 for i in range(len(arrivals) - 2)), arrivals
    assert router.health()[0].in_flight == 0


async def test_waiting_for_a_slot_counts_against_the_total_timeout(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    fake, _ = servers
    fake.script("m", answer="held", first_token_delay_s=1.0)
    router = Router(deployments=[Deployment(provider=provider("a", fake), model="m")],
                    config=RouterConfig(backoff_base_s=0))
    router.limit_providers({"a": 1})
    holder = asyncio.create_task(router.chat(request()))
    while not fake.calls(CHAT):  # the first call has the only slot
        await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError):
        await router.chat(request(timeout_s=0.3))
    assert time.monotonic() - started < 0.9  # gave up at its own deadline, not when the slot freed
    assert len(fake.calls(CHAT)) == 1  # the waiting call never reached the server
    assert (await holder).text == "held"
    fake.script("m", first_token_delay_s=0.0)
    assert (await router.chat(request(timeout_s=5))).text == "held"  # the slot was given back
    assert router.health()[0].in_flight == 0


async def test_slow_first_token_fails_over_quickly(servers: tuple[FakeOpenAICompat, FakeOpenAICompat]) -> None:
    slow, quick = servers
    slow.script("m", answer="slow answer", first_token_delay_s=10)
    quick.script("m", answer="quick answer")
    clients = [provider("slow", slow), provider("quick", quick)]
    router = Router(
        deployments=[Deployment(provider=c, model="m", weight=w) for c, w in zip(clients, (10, 1), strict=True)],
        config=RouterConfig(first_token_timeout_s=0.4),
    )
    started = time.monotonic()
    text, _ = await collect(router, request())
    elapsed = time.monotonic() - started
    assert text == "quick answer"
    assert len(slow.calls(CHAT)) == 1
    assert elapsed < 5


async def test_broken_stream_continues_on_another_server_seamlessly(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    breaking, rescuing = servers
    breaking.script("m", answer=ANSWER, drop_after_tokens=3)
    rescuing.script("m", answer=ANSWER)
    clients = [provider("breaking", breaking), provider("rescuing", rescuing)]
    records: list[CallRecord] = []

    async def on_call(record: CallRecord) -> None:
        records.append(record)

    router = Router(
        deployments=[Deployment(provider=c, model="m", weight=w) for c, w in zip(clients, (10, 1), strict=True)],
        on_call=on_call,
    )
    text, pieces = await collect(router, request())
    assert text == ANSWER
    assert "".join(pieces[:3]) == "Alpha beta gamma "
    sent = rescuing.calls(CHAT)[0].body["messages"]
    assert sent[-2] == {"role": "user", "content": CONTINUE_INSTRUCTION}
    assert sent[-1] == {"role": "assistant", "content": "Alpha beta gamma "}
    assert [(r.deployment, r.ok, r.continued) for r in records] == [
        ("breaking/m", False, False),
        ("rescuing/m", True, True),
    ]


async def test_after_every_server_failed_once_the_retry_rotates_instead_of_repeating_the_last(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    # The first server answers 503 once; the second breaks every stream. The third attempt must go back
    # to the first server (failed longest ago), not to the one whose stream just broke.
    flaky, breaking = servers
    flaky.script("m", answer=ANSWER, fail_status=503, fail_times=1)
    breaking.script("m", answer=ANSWER, drop_after_tokens=3)
    clients = [provider("flaky", flaky), provider("breaking", breaking)]
    router = Router(
        deployments=[Deployment(provider=c, model="m", weight=w) for c, w in zip(clients, (10, 1), strict=True)],
        config=RouterConfig(backoff_base_s=0.01, backoff_max_s=0.02),
    )
    text, _ = await collect(router, request())
    assert text == ANSWER
    assert len(flaky.calls(CHAT)) == 2
    assert len(breaking.calls(CHAT)) == 1
    assert flaky.calls(CHAT)[1].body["messages"][-1] == {"role": "assistant", "content": "Alpha beta gamma "}


async def test_server_error_event_midway_continues_on_the_fallback_model(
    servers: tuple[FakeOpenAICompat, FakeOpenAICompat],
) -> None:
    fake, _ = servers
    fake.script("big", answer=ANSWER, error_after_tokens=5)
    fake.script("small", answer=ANSWER)
    client = provider("a", fake)
    router = Router(
        deployments=[Deployment(provider=client, model="big"), Deployment(provider=client, model="small")],
        config=RouterConfig(retries_per_group=0, fallbacks={"big": ["small"]}),
    )
    text, _ = await collect(router, request("big"))
    assert text == ANSWER
    assert [call.body["model"] for call in fake.calls(CHAT)] == ["big", "small"]


async def test_total_timeout_bounds_the_whole_request(servers: tuple[FakeOpenAICompat, FakeOpenAICompat]) -> None:
    fake, _ = servers
    fake.script("m", answer=ANSWER, token_delay_s=0.3)
    router = Router(deployments=[Deployment(provider=provider("a", fake), model="m")],
                    config=RouterConfig(total_timeout_s=0.8, backoff_base_s=0))  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ProviderTimeoutError, match="total timeout"):
        await collect(router, request())
    assert time.monotonic() - started < 3


async def test_abandoned_stream_releases_its_deployment(servers: tuple[FakeOpenAICompat, FakeOpenAICompat]) -> None:
    fake, _ = servers
    fake.script("m", answer=ANSWER, token_delay_s=0.05)
    router = Router(deployments=[Deployment(provider=provider("a", fake), model="m")])
    stream = router.stream_chat(request())
    first = await anext(stream)
    assert first.text
    assert router.health()[0].in_flight == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert router.health()[0].in_flight == 0
    deadline = time.monotonic() + 5
    while fake.open_streams and time.monotonic() < deadline:  # the server sees the client go away
        await asyncio.sleep(0.01)
    assert fake.open_streams == 0


async def test_unreachable_servers_end_in_one_clear_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = OpenAICompatProvider(name="gone", base_url=f"http://127.0.0.1:{port}")
    _open_clients.append(client)
    router = Router(deployments=[Deployment(provider=client, model="m")], config=RouterConfig(backoff_base_s=0.01))
    with pytest.raises(NoDeploymentAvailableError, match="gone/m"):
        await router.chat(request())
    with pytest.raises(NoDeploymentAvailableError, match="no provider serves it"):
        await router.chat(request("unknown-model"))


@pytest.mark.parametrize(
    ("emitted", "continuation", "expected"),
    [
        ("The quick brown ", ["fox jumps"], "fox jumps"),  # a clean continuation passes through
        ("The quick brown ", ["quick brown fox"], "fox"),  # the tail was repeated
        ("The quick brown ", ["The quick", " brown fox"], "fox"),  # the model started over
        ("Hello ", ["Hello", " world"], "world"),  # whole (short) earlier text repeated
        ("He said no. ", ["no", " means no"], "no means no"),  # short coincidence is kept
    ],
)
def test_stitcher_removes_repeated_text_only(emitted: str, continuation: list[str], expected: str) -> None:
    stitcher = Stitcher(emitted, min_overlap=6)
    shown = "".join(stitcher.feed(piece) for piece in continuation) + stitcher.flush()
    assert shown == expected
