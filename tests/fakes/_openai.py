"""The OpenAI-compatible surface (`/v1/models`, `/v1/chat/completions`, `/v1/embeddings`).

Shared by the LM Studio fake (its `/v1/*`) and the llama.cpp-like fake. SSE frames follow
OpenAI's streaming format: `data: {chat.completion.chunk}` frames, an optional usage chunk when
`stream_options.include_usage` is true, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
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


def openai_error(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """An OpenAI-style error body."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 429:
        kind = "rate_limit_exceeded"
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": code or status}}, status=status, headers=headers
    )


class OpenAIProtocolMixin(FakeLLMServer):
    """Handlers for the OpenAI-compatible endpoints; subclasses register them on their routes."""

    #: when set, requests naming an unknown model are served by this model (llama.cpp single-model)
    default_model: str | None = None
    owned_by: str = "organization_owner"

    def resolve(self, name: Any) -> tuple[str, ModelScript] | None:
        """The script serving a request's `model` field."""
        if isinstance(name, str) and name in self.models:
            return name, self.models[name]
        if self.default_model is not None and self.default_model in self.models:
            return self.default_model, self.models[self.default_model]
        return None

    def visible_in_v1_models(self, name: str, script: ModelScript) -> bool:
        """Which models `/v1/models` lists (LM Studio: loaded ones; llama.cpp: all)."""
        return True

    def on_model_used(self, name: str, script: ModelScript) -> None:
        """Hook: a chat request used this model (LM Studio JIT-loads it)."""

    async def handle_v1_models(self, request: web.Request) -> web.Response:
        """GET /v1/models."""
        data = [
            {"id": name, "object": "model", "owned_by": self.owned_by, "created": 1_700_000_000}
            for name, script in self.models.items()
            if self.visible_in_v1_models(name, script)
        ]
        return web.json_response({"object": "list", "data": data})

    async def handle_embeddings(self, request: web.Request) -> web.Response:
        """POST /v1/embeddings."""
        body = request[JSON_BODY]
        if not isinstance(body, dict):
            return openai_error(400, "body must be a JSON object")
        found = self.resolve(body.get("model"))
        if found is None:
            return openai_error(404, f"model '{body.get('model')}' not found", code="model_not_found")
        name, script = found
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_for(str(text), script.embedding_dims)}
            for i, text in enumerate(texts)
        ]
        usage = {"prompt_tokens": count_words(" ".join(map(str, texts))), "total_tokens": 0}
        return web.json_response({"object": "list", "data": data, "model": name, "usage": usage})

    async def handle_chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/chat/completions (also /api/v0/chat/completions on LM Studio)."""
        body = request[JSON_BODY]
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return openai_error(400, "'messages' is required and must be an array")
        found = self.resolve(body.get("model"))
        if found is None:
            return openai_error(404, f"model '{body.get('model')}' not found", code="model_not_found")
        name, script = found
        if self.take_failure(script):
            return openai_error(
                script.fail_status, f"scripted failure {script.fail_status}", headers=self.failure_headers(script)
            )
        self.on_model_used(name, script)
        messages: list[Any] = body["messages"]
        tokens = script.tokens_for(body)
        prefix = ""
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            prefix = str(last.get("content", ""))
            full = script.text_for(body)
            if full.startswith(prefix):
                tokens = _TOKEN_RE.findall(full[len(prefix) :]) or [""]
        finish = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens < len(tokens):
            tokens = tokens[:max_tokens]
            finish = "length"
        prompt_tokens = script.prompt_tokens if script.prompt_tokens is not None else count_words(messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        }
        chat_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())
        if script.structured_delay_s and schema_title(body) is not None:
            await asyncio.sleep(script.structured_delay_s)
        if not body.get("stream"):
            if script.first_token_delay_s:
                await asyncio.sleep(script.first_token_delay_s)
            if script.drop_after_tokens is not None:
                self.cut_connection(request)
                return web.Response(status=200)
            payload: dict[str, Any] = {
                "id": chat_id,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            payload.update(self.extra_chat_fields(request, script, len(tokens)))
            return web.json_response(payload)
        return await self._stream_chat(request, body, name, script, tokens, finish, usage, chat_id, created)

    def extra_chat_fields(self, request: web.Request, script: ModelScript, n_tokens: int) -> dict[str, Any]:
        """Server-specific extras in a whole answer (LM Studio v0 `stats`)."""
        return {}

    async def _stream_chat(
        self,
        request: web.Request,
        body: dict[str, Any],
        name: str,
        script: ModelScript,
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
        chat_id: str,
        created: int,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        self.open_streams += 1
        try:

            def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
                frame = {
                    "id": chat_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }
                return f"data: {json.dumps(frame)}\n\n".encode()

            split = script.split_bytes
            if script.keepalive_comments:
                await self.write_frame(resp, b": keep-alive\n\n", split)
            await self.write_frame(resp, chunk({"role": "assistant", "content": ""}, None), split)
            if script.first_token_delay_s:
                await asyncio.sleep(script.first_token_delay_s)
            for index, token in enumerate(tokens):
                if script.drop_after_tokens is not None and index >= script.drop_after_tokens:
                    self.cut_connection(request)
                    return resp
                if script.error_after_tokens is not None and index >= script.error_after_tokens:
                    error = {"error": {"message": script.error_message, "type": "server_error", "code": 500}}
                    await self.write_frame(resp, f"data: {json.dumps(error)}\n\n".encode(), split)
                    await resp.write_eof()
                    return resp
                if index and script.token_delay_s:
                    await asyncio.sleep(script.token_delay_s)
                await self.write_frame(resp, chunk({"content": token}, None), split)
                if script.keepalive_comments:
                    await self.write_frame(resp, b": keep-alive\n\n", split)
            if script.drop_after_tokens is not None and script.drop_after_tokens >= len(tokens):
                self.cut_connection(request)
                return resp
            if script.error_after_tokens is not None and script.error_after_tokens >= len(tokens):
                error = {"error": {"message": script.error_message, "type": "server_error", "code": 500}}
                await self.write_frame(resp, f"data: {json.dumps(error)}\n\n".encode(), split)
                await resp.write_eof()
                return resp
            await self.write_frame(resp, chunk({}, finish), split)
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage"):
                usage_frame = {
                    "id": chat_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [],
                    "usage": usage,
                }
                await self.write_frame(resp, f"data: {json.dumps(usage_frame)}\n\n".encode(), split)
            await self.write_frame(resp, b"data: [DONE]\n\n", split)
            await resp.write_eof()
            return resp
        finally:
            self.open_streams -= 1
