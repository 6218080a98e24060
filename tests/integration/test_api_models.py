"""Model actions through the real provider clients against a local Ollama peer."""

from __future__ import annotations

import uuid

from tests.fakes.ollama import FakeOllama
from tests.integration import test_api_harness as harness
from tests.integration.test_api_harness import Api

api, shared_db = harness.api, harness.shared_db


async def test_load_unload_and_recommend(api: Api) -> None:
    async with FakeOllama() as ollama:
        ollama.script("qwen2.5-coder:7b", loaded=False, params="7B")
        name = f"ollama-{uuid.uuid4().hex[:6]}"
        _, provider, _ = await api.call("POST", "/providers", json={
            "name": name, "kind": "ollama", "base_url": ollama.url}, expect=201)
        _, model, _ = await api.call("POST", "/models", json={
            "provider_id": provider["id"], "model_key": "qwen2.5-coder:7b", "context_length": 32768}, expect=201)
        _, loaded, _ = await api.call("POST", f"/models/{model['id']}/load", scope="write",
                                      json={"keep_alive_s": 600}, expect=200)
        assert loaded["is_loaded"] is True
        load_calls = [c for c in ollama.calls() if c.path in ("/api/generate", "/api/chat")]
        assert load_calls
        assert load_calls[-1].body["model"] == "qwen2.5-coder:7b"
        _, unloaded, _ = await api.call("POST", f"/models/{model['id']}/unload", scope="write", expect=200)
        assert unloaded["is_loaded"] is False
        unload_call = [c for c in ollama.calls() if c.path in ("/api/generate", "/api/chat")][-1]
        assert unload_call.body["keep_alive"] == 0
        _, ranked, _ = await api.call("GET", f"/models/recommend?task_type=coding&provider={name}", expect=200)
        assert ranked["task_type"] == "code"
        assert ranked["items"][0]["model"] == "qwen2.5-coder:7b"
        assert ranked["items"][0]["reason"]
        status, problem, _ = await api.call("GET", "/models/recommend?task_type=astrology")
        assert status == 422
        assert "task type" in problem["detail"]
        _, missing, _ = await api.call("POST", "/models", json={
            "provider_id": provider["id"], "model_key": "not-on-server"}, expect=201)
        status, problem, _ = await api.call("POST", f"/models/{missing['id']}/load", scope="write", json={})
        assert status in (404, 502)
        assert problem["type"].startswith("urn:orchestrator:problem:")
        url = ollama.url
    # The server is gone: the API says the upstream failed, it does not crash.
    status, problem, _ = await api.call("POST", f"/models/{model['id']}/load", scope="write", json={})
    assert status == 502
    assert problem["type"].endswith("upstream-failed")
    assert url
