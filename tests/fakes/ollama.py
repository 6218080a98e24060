"""A local Ollama: `/api/tags`, `/api/ps`, `/api/show`, `/api/chat`, `/api/generate`, `/api/pull`,
`/api/embed`, `/api/version`, with NDJSON streaming as in ollama/ollama `docs/api.md`.

Script it like this::

    async with FakeOllama() as ollama:
        ollama.script("llama3.2", answer="X", token_delay_s=0.01)
        ollama.script("qwen3", json_answer={"ok": True})
        ollama.script("broken", answer="a b c d e f g", error_after_tokens=3)  # {"error": ...} line
        ollama.script("cut", answer="a b c d e f g", drop_after_tokens=5)      # TCP cut
        ollama.script("cold", loaded=False)                  # in /api/tags, not in /api/ps
        ollama.pullable["tinyllama"] = PullScript(total_bytes=3000, steps=3)
        ollama.pullable["bad"] = PullScript(error="digest mismatch")
        ...
        assert ollama.calls("/api/chat")[0].body["keep_alive"] == 0

A chat or generate request with no messages/prompt loads the model (`done_reason: "load"`);
with `keep_alive: 0` it unloads it (`done_reason: "unload"`). Errors use Ollama's `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from tests.fakes._base import (
    _TOKEN_RE,
    JSON_BODY,
    FakeLLMServer,
    ModelScript,
    count_words,
    embedding_for,
    schema_title,
)

_CREATED_AT = "2026-01-01T00:00:00.000000Z"


@dataclass
class PullScript:
    """A model `/api/pull` can fetch: `steps` progress lines, or an error line."""

    total_bytes: int = 3000
    steps: int = 3
    error: str | None = None
    digest: str = "sha256:" + "ab" * 32


def ollama_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """Ollama's error body."""
    return web.json_response({"error": message}, status=status, headers=headers)


class FakeOllama(FakeLLMServer):
    """Ollama-like server; see the module docstring."""

    version = "0.12.6"

    def __init__(self, *, api_token: str | None = None) -> None:
        super().__init__(api_token=api_token)
        self.pullable: dict[str, PullScript] = {}
        self.expires: dict[str, str] = {}

    def auth_error(self) -> web.Response:
        return ollama_error(401, "unauthorized")

    def build_app(self) -> web.Application:
        app = self._new_app()
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_post("/api/embed", self._embed)
        app.router.add_get("/", self._root)
        return app

    # -- helpers ---------------------------------------------------------------------------
    def _find(self, name: Any) -> tuple[str, ModelScript] | None:
        if not isinstance(name, str):
            return None
        if name in self.models:
            return name, self.models[name]
        if ":" not in name and f"{name}:latest" in self.models:
            return f"{name}:latest", self.models[f"{name}:latest"]
        if name.endswith(":latest") and name[: -len(":latest")] in self.models:
            key = name[: -len(":latest")]
            return key, self.models[key]
        return None

    @staticmethod
    def _details(script: ModelScript) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": script.family,
            "families": [script.family],
            "parameter_size": script.params,
            "quantization_level": script.quantization,
        }

    @staticmethod
    def _digest(name: str) -> str:
        return "".join(f"{ord(c):02x}" for c in name)[:64].ljust(64, "0")

    def _apply_keep_alive(self, name: str, script: ModelScript, keep_alive: Any) -> bool:
        """Return True when this request unloads the model."""
        if keep_alive in (0, "0", "0s", "0m"):
            script.loaded = False
            self.expires.pop(name, None)
            return True
        seconds = 300.0
        if isinstance(keep_alive, int | float):
            seconds = float(keep_alive)
        elif isinstance(keep_alive, str) and keep_alive[:-1].isdigit():
            seconds = float(keep_alive[:-1]) * {"s": 1, "m": 60, "h": 3600}.get(keep_alive[-1], 1)
        script.loaded = True
        if seconds < 0:
            self.expires[name] = "2318-08-21T00:00:00Z"
        else:
            self.expires[name] = (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()
        return False

    # -- routes ----------------------------------------------------------------------------
    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _tags(self, request: web.Request) -> web.Response:
        models = [
            {
                "name": name,
                "model": name,
                "modified_at": _CREATED_AT,
                "size": script.size_bytes,
                "digest": self._digest(name),
                "details": self._details(script),
            }
            for name, script in self.models.items()
        ]
        return web.json_response({"models": models})

    async def _ps(self, request: web.Request) -> web.Response:
        models = [
            {
                "name": name,
                "model": name,
                "size": script.size_bytes,
                "digest": self._digest(name),
                "details": self._details(script),
                "expires_at": self.expires.get(name, "2026-01-01T00:05:00Z"),
                "size_vram": script.vram_bytes,
                "context_length": script.context_length,
            }
            for name, script in self.models.items()
            if script.loaded
        ]
        return web.json_response({"models": models})

    async def _show(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        found = self._find(name)
        if found is None:
            return ollama_error(404, f"model '{name}' not found")
        key, script = found
        capabilities = ["embedding"] if script.model_type == "embedding" else ["completion"]
        return web.json_response(
            {
                "modelfile": f"FROM {key}\n",
                "parameters": 'stop "<|im_end|>"',
                "template": "{{ .Prompt }}",
                "details": self._details(script),
                "model_info": {
                    "general.architecture": script.family,
                    "general.parameter_count": 135_000_000,
                    f"{script.family}.context_length": script.context_length,
                },
                "capabilities": capabilities,
                "modified_at": _CREATED_AT,
            }
        )

    async def _embed(self, request: web.Request) -> web.Response:
        body = request[JSON_BODY]
        found = self._find(body.get("model") if isinstance(body, dict) else None)
        if found is None:
            return ollama_error(404, "model not found")
        key, script = found
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        return web.json_response(
            {
                "model": key,
                "embeddings": [embedding_for(str(t), script.embedding_dims) for t in texts],
                "total_duration": 1000,
                "load_duration": 100,
                "prompt_eval_count": count_words(" ".join(map(str, texts))),
            }
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=True)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, chat=False)

    async def _complete(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body = request[JSON_BODY]
        if not isinstance(body, dict):
            return ollama_error(400, "invalid request body")
        found = self._find(body.get("model"))
        if found is None:
            return ollama_error(404, f"model '{body.get('model')}' not found, try pulling it first")
        key, script = found
        if self.take_failure(script):
            return ollama_error(
                script.fail_status, f"scripted failure {script.fail_status}", self.failure_headers(script)
            )
        messages = body.get("messages") if chat else None
        prompt = body.get("prompt") if not chat else None
        empty = (chat and not messages) or (not chat and not prompt)
        base: dict[str, Any] = {"model": key, "created_at": _CREATED_AT}
        if empty:
            unloading = self._apply_keep_alive(key, script, body.get("keep_alive"))
            final = dict(base, done=True, done_reason="unload" if unloading else "load")
            if chat:
                final["message"] = {"role": "assistant", "content": ""}
            else:
                final["response"] = ""
            return web.json_response(final)
        self._apply_keep_alive(key, script, body.get("keep_alive"))
        tokens = script.tokens_for(body)
        if chat and isinstance(messages, list) and messages and messages[-1].get("role") == "assistant":
            prefix = str(messages[-1].get("content", ""))
            full = script.text_for(body)
            if full.startswith(prefix):
                tokens = _TOKEN_RE.findall(full[len(prefix) :]) or [""]
        options = body.get("options") if isinstance(body.get("options"), dict) else {}
        done_reason = "stop"
        num_predict = options.get("num_predict")
        if isinstance(num_predict, int) and 0 <= num_predict < len(tokens):
            tokens = tokens[:num_predict]
            done_reason = "length"
        prompt_tokens = script.prompt_tokens if script.prompt_tokens is not None else count_words(messages or prompt)
        eval_duration = max(1, len(tokens)) * 20_000_000
        stats = {
            "total_duration": eval_duration + 50_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": 10_000_000,
            "eval_count": len(tokens),
            "eval_duration": eval_duration,
        }

        if script.structured_delay_s and schema_title(body) is not None:
            await asyncio.sleep(script.structured_delay_s)

        def piece(text: str) -> dict[str, Any]:
            if chat:
                return dict(base, message={"role": "assistant", "content": text}, done=False)
            return dict(base, response=text, done=False)

        if body.get("stream") is False:
            if script.first_token_delay_s:
                await asyncio.sleep(script.first_token_delay_s)
            final = piece("".join(tokens))
            final.update(done=True, done_reason=done_reason, **stats)
            return web.json_response(final)

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        self.open_streams += 1
        try:
            split = script.split_bytes
            if script.first_token_delay_s:
                await asyncio.sleep(script.first_token_delay_s)
            for index, token in enumerate(tokens):
                if script.drop_after_tokens is not None and index >= script.drop_after_tokens:
                    self.cut_connection(request)
                    return resp
                if script.error_after_tokens is not None and index >= script.error_after_tokens:
                    await self.write_frame(resp, (json.dumps({"error": script.error_message}) + "\n").encode(), split)
                    await resp.write_eof()
                    return resp
                if index and script.token_delay_s:
                    await asyncio.sleep(script.token_delay_s)
                await self.write_frame(resp, (json.dumps(piece(token)) + "\n").encode(), split)
            if script.drop_after_tokens is not None:
                self.cut_connection(request)
                return resp
            if script.error_after_tokens is not None:
                await self.write_frame(resp, (json.dumps({"error": script.error_message}) + "\n").encode(), split)
                await resp.write_eof()
                return resp
            final = piece("")
            final.update(done=True, done_reason=done_reason, **stats)
            await self.write_frame(resp, (json.dumps(final) + "\n").encode(), split)
            await resp.write_eof()
            return resp
        finally:
            self.open_streams -= 1

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        body = request[JSON_BODY]
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not isinstance(name, str):
            return ollama_error(400, "model is required")
        pull = self.pullable.get(name)
        lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        if name in self.models and pull is None:
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        elif pull is None:
            lines.append({"error": "pull model manifest: file does not exist"})
        else:
            for step in range(1, pull.steps + 1):
                lines.append(
                    {
                        "status": f"pulling {pull.digest[7:19]}",
                        "digest": pull.digest,
                        "total": pull.total_bytes,
                        "completed": pull.total_bytes * step // pull.steps,
                    }
                )
            if pull.error is not None:
                lines.append({"error": pull.error})
            else:
                lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        succeeded = lines[-1].get("status") == "success"
        if body.get("stream") is False:
            if not succeeded:
                return ollama_error(500, str(lines[-1].get("error")))
            return web.json_response({"status": "success"})
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for line in lines:
            await resp.write((json.dumps(line) + "\n").encode())
        if succeeded and name not in self.models and pull is not None:
            self.models[name] = ModelScript(loaded=False, size_bytes=pull.total_bytes)
        await resp.write_eof()
        return resp
