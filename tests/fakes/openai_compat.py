"""A local OpenAI-compatible server shaped like llama.cpp's `llama-server` (and paid APIs).

Script it like this::

    async with FakeOpenAICompat() as srv:                      # single-model llama.cpp
        srv.script("smol", answer="X", keepalive_comments=True, split_bytes=7)
    async with FakeOpenAICompat(router_mode=True) as srv:      # llama.cpp router mode
        srv.script("a", loaded=False); srv.script("b")
        # GET /models lists {"id", "status": {"value": "loaded"|"unloaded"}}; POST /models/load
        # and /models/unload take {"model": id}; a chat to an unloaded model autoloads it.
    async with FakeOpenAICompat(api_token="sk-test") as srv:   # a paid API wanting a bearer token
        srv.script("gpt-x", fail_status=429, fail_times=1, retry_after="1")

In single-model mode (llama.cpp without a router) the `model` field of a request is ignored and
the first scripted model answers, as llama-server does. `/health` answers `{"status": "ok"}`
(or 503 `{"error": ...}` while `loading` is true); `/props` reports the role.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes._base import JSON_BODY, ModelScript
from tests.fakes._openai import OpenAIProtocolMixin, openai_error


class FakeOpenAICompat(OpenAIProtocolMixin):
    """llama-server-like; see the module docstring."""

    owned_by = "llamacpp"

    def __init__(self, *, api_token: str | None = None, router_mode: bool = False) -> None:
        super().__init__(api_token=api_token)
        self.router_mode = router_mode
        self.loading = False
        self.autoload = True

    def script(self, model: str, **behaviour: Any) -> ModelScript:
        """Add or change a model; in single-model mode the first one serves every request."""
        script = super().script(model, **behaviour)
        if not self.router_mode and self.default_model is None:
            self.default_model = model
        return script

    def resolve(self, name: Any) -> tuple[str, ModelScript] | None:
        if self.router_mode:
            if isinstance(name, str) and name in self.models:
                return name, self.models[name]
            return None
        return super().resolve(name)

    def on_model_used(self, name: str, script: ModelScript) -> None:
        if self.router_mode and self.autoload:
            script.loaded = True

    def auth_error(self) -> web.Response:
        return openai_error(401, "Incorrect API key provided", code="invalid_api_key")

    def build_app(self) -> web.Application:
        app = self._new_app()
        app.router.add_get("/health", self._health)
        app.router.add_get("/props", self._props)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self.handle_embeddings)
        if self.router_mode:
            app.router.add_post("/models/load", self._load)
            app.router.add_post("/models/unload", self._unload)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        if self.loading:
            return web.json_response(
                {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}, status=503
            )
        return web.json_response({"status": "ok"})

    async def _props(self, request: web.Request) -> web.Response:
        if self.router_mode:
            return web.json_response({"role": "router"})
        script = self.models.get(self.default_model or "")
        n_ctx = script.context_length if script else 4096
        return web.json_response(
            {
                "default_generation_settings": {"n_ctx": n_ctx},
                "total_slots": 1,
                "model_path": f"/models/{self.default_model}.gguf",
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        data: list[dict[str, Any]] = []
        for name, script in self.models.items():
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": 1_700_000_000,
                "owned_by": self.owned_by,
                "meta": {"n_ctx_train": script.context_length, "size": script.size_bytes, "n_params": 135_000_000},
            }
            if self.router_mode:
                entry["status"] = {
                    "value": "loaded" if script.loaded else "unloaded",
                    "args": ["llama-server", "-c", str(script.context_length)],
                }
                entry["in_cache"] = True
                entry["path"] = f"/models/{name}.gguf"
            data.append(entry)
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.router_mode and not self.autoload:
            body = request[JSON_BODY]
            script = self.models.get(body.get("model")) if isinstance(body, dict) else None
            if script is not None and not script.loaded:
                return openai_error(400, "model is not loaded")
        return await self.handle_chat(request)

    async def _load(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        name = body.get("model") if isinstance(body, dict) else None
        script = self.models.get(name) if isinstance(name, str) else None
        if script is None:
            return openai_error(404, f"model '{name}' not found")
        if script.loaded:
            return openai_error(400, "model is already loaded")
        script.loaded = True
        return web.json_response({"success": True})

    async def _unload(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        name = body.get("model") if isinstance(body, dict) else None
        script = self.models.get(name) if isinstance(name, str) else None
        if script is None:
            return openai_error(404, f"model '{name}' not found")
        if not script.loaded:
            return openai_error(400, "model is not loaded")
        script.loaded = False
        return web.json_response({"success": True})
