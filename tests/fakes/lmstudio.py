"""A local LM Studio: native REST v1 and v0, and the OpenAI-compatible `/v1/*`.

Script it like this::

    async with FakeLMStudio(api_token="sekret") as lms:
        lms.script("qwen", answer="X")                               # whole answer / stream
        lms.script("judge", json_answer={"verdict": "pass"})         # structured output
        lms.script("flaky", answer="a b c d e f", drop_after_tokens=5)  # TCP cut after 5 tokens
        lms.script("busy", fail_status=429, fail_times=1, retry_after="2")
        lms.script("cold", loaded=False, size_bytes=4_000_000_000)   # downloaded, not loaded
        lms.downloadable["new/model"] = DownloadScript(total_bytes=1000, steps=4)
        lms.load_errors["huge"] = (500, "insufficient system resources")
        provider = build_provider(kind="lmstudio", name="lms", base_url=lms.url, api_token="sekret")
        ...
        assert lms.calls("/api/v1/models/load")[0].body["context_length"] == 8192

`native_v1=False` makes `/api/v1/*` answer 404 (LM Studio before 0.4); `native_v0=False` the same
for `/api/v0/*`. `jit=True` (default) lists every downloaded model on `/v1/models` and loads a model
on first use, as LM Studio's just-in-time loading does; with `jit=False` only loaded models are
listed and a chat to an unloaded model is a 404.

Wire formats follow lmstudio-ai/docs `0_app/4_api/2_rest/*` and the developer REST pages.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._base import JSON_BODY, ModelScript
from tests.fakes._openai import OpenAIProtocolMixin, openai_error


@dataclass
class DownloadScript:
    """A model the fake can download: each status poll advances one step."""

    total_bytes: int = 1000
    steps: int = 3
    fail_at_step: int | None = None
    model_type: str = "llm"


@dataclass
class _Job:
    job_id: str
    model: str
    script: DownloadScript
    step: int = 0
    status: str = "downloading"
    started_at: str = "2026-01-01T00:00:00.000Z"
    extra: dict[str, Any] = field(default_factory=dict)

    def downloaded(self) -> int:
        return min(self.script.total_bytes, self.script.total_bytes * self.step // max(1, self.script.steps))


class FakeLMStudio(OpenAIProtocolMixin):
    """LM Studio 0.4-like server; see the module docstring for scripting."""

    owned_by = "organization_owner"

    def __init__(
        self,
        *,
        api_token: str | None = None,
        native_v1: bool = True,
        native_v0: bool = True,
        jit: bool = True,
    ) -> None:
        super().__init__(api_token=api_token)
        self.native_v1 = native_v1
        self.native_v0 = native_v0
        self.jit = jit
        self.instances: dict[str, list[dict[str, Any]]] = {}
        self.downloadable: dict[str, DownloadScript] = {}
        self.jobs: dict[str, _Job] = {}
        self.load_errors: dict[str, tuple[int, str]] = {}
        self.load_delay_s = 0.0

    def script(self, model: str, **behaviour: Any) -> ModelScript:
        """Add or change a model; `loaded=True` (default) gives it one instance named after the key."""
        existed = model in self.models
        script = super().script(model, **behaviour)
        if "loaded" in behaviour or not existed:
            if script.loaded and not self.instances.get(model):
                self.instances[model] = [self._instance(model, model, script.context_length)]
            elif not script.loaded:
                self.instances.pop(model, None)
        return script

    def loaded_instance_ids(self, model: str) -> list[str]:
        """Instance ids currently loaded for a model."""
        return [str(inst["id"]) for inst in self.instances.get(model, [])]

    @staticmethod
    def _instance(instance_id: str, model: str, context_length: int) -> dict[str, Any]:
        return {
            "id": instance_id,
            "config": {
                "context_length": context_length,
                "eval_batch_size": 512,
                "flash_attention": False,
                "num_experts": 0,
                "offload_kv_cache_to_gpu": True,
            },
        }

    # -- OpenAI-compatible hooks -----------------------------------------------------------
    def visible_in_v1_models(self, name: str, script: ModelScript) -> bool:
        return self.jit or bool(self.instances.get(name))

    def resolve(self, name: Any) -> tuple[str, ModelScript] | None:
        found = super().resolve(name)
        if found is None:
            return None
        if not self.jit and not self.instances.get(found[0]):
            return None
        return found

    def on_model_used(self, name: str, script: ModelScript) -> None:
        if not self.instances.get(name):
            self.instances[name] = [self._instance(name, name, script.context_length)]
            script.loaded = True

    def extra_chat_fields(self, request: web.Request, script: ModelScript, n_tokens: int) -> dict[str, Any]:
        if not request.path.startswith("/api/v0/"):
            return {}
        return {
            "stats": {
                "tokens_per_second": 50.0,
                "time_to_first_token": script.first_token_delay_s or 0.05,
                "generation_time": n_tokens / 50.0,
                "stop_reason": "eosFound",
            },
            "model_info": {
                "arch": script.family,
                "quant": script.quantization,
                "format": "gguf",
                "context_length": script.context_length,
            },
            "runtime": {"name": "llama.cpp-linux-x86_64-avx2", "version": "1.0.0", "supported_formats": ["gguf"]},
        }

    # -- routes ----------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = self._new_app()
        app.router.add_get("/v1/models", self.handle_v1_models)
        app.router.add_post("/v1/chat/completions", self.handle_chat)
        app.router.add_post("/v1/embeddings", self.handle_embeddings)
        app.router.add_get("/api/v1/models", self._v1_models)
        app.router.add_post("/api/v1/models/load", self._v1_load)
        app.router.add_post("/api/v1/models/unload", self._v1_unload)
        app.router.add_post("/api/v1/models/download", self._v1_download)
        app.router.add_get("/api/v1/models/download/status", self._v1_download_status_all)
        app.router.add_get("/api/v1/models/download/status/{job_id}", self._v1_download_status)
        app.router.add_get("/api/v0/models", self._v0_models)
        app.router.add_get("/api/v0/models/{model:.+}", self._v0_model)
        app.router.add_post("/api/v0/chat/completions", self._v0_chat)
        return app

    def _v1_guard(self) -> web.Response | None:
        if not self.native_v1:
            return web.json_response({"error": "Unexpected endpoint or method."}, status=404)
        return None

    def _v0_guard(self) -> web.Response | None:
        if not self.native_v0:
            return web.json_response({"error": "Unexpected endpoint or method."}, status=404)
        return None

    def _v1_entry(self, name: str, script: ModelScript) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "embedding" if script.model_type == "embedding" else "llm",
            "publisher": name.split("/")[0] if "/" in name else "lmstudio-community",
            "key": name,
            "display_name": name.split("/")[-1].replace("-", " ").title(),
            "quantization": {"name": script.quantization, "bits_per_weight": 4},
            "size_bytes": script.size_bytes,
            "params_string": script.params,
            "loaded_instances": list(self.instances.get(name, [])),
            "max_context_length": script.context_length,
            "format": "gguf",
        }
        if script.model_type != "embedding":
            entry["architecture"] = script.family
            entry["capabilities"] = {"vision": False, "trained_for_tool_use": True}
        return entry

    async def _v1_models(self, request: web.Request) -> web.Response:
        if (guard := self._v1_guard()) is not None:
            return guard
        return web.json_response({"models": [self._v1_entry(n, s) for n, s in self.models.items()]})

    async def _v1_load(self, request: web.Request) -> web.Response:
        if (guard := self._v1_guard()) is not None:
            return guard
        body = request[JSON_BODY]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return openai_error(400, "'model' is required")
        name = body["model"]
        script = self.models.get(name)
        if script is None:
            return openai_error(404, f"Model '{name}' not found", code="model_not_found")
        if name in self.load_errors:
            status, message = self.load_errors[name]
            return openai_error(status, message)
        if self.load_delay_s:
            await asyncio.sleep(self.load_delay_s)
        existing = self.instances.setdefault(name, [])
        instance_id = name if not existing else f"{name}:{len(existing) + 1}"
        context = body.get("context_length") or script.context_length
        instance = self._instance(instance_id, name, int(context))
        for key in ("eval_batch_size", "flash_attention", "num_experts", "offload_kv_cache_to_gpu"):
            if key in body:
                instance["config"][key] = body[key]
        existing.append(instance)
        script.loaded = True
        answer: dict[str, Any] = {
            "type": "embedding" if script.model_type == "embedding" else "llm",
            "instance_id": instance_id,
            "load_time_seconds": 0.25,
            "status": "loaded",
        }
        if body.get("echo_load_config"):
            answer["load_config"] = dict(instance["config"])
        return web.json_response(answer)

    async def _v1_unload(self, request: web.Request) -> web.Response:
        if (guard := self._v1_guard()) is not None:
            return guard
        body = request[JSON_BODY]
        instance_id = body.get("instance_id") if isinstance(body, dict) else None
        if not isinstance(instance_id, str):
            return openai_error(400, "'instance_id' is required")
        for name, instances in self.instances.items():
            for inst in instances:
                if inst["id"] == instance_id:
                    instances.remove(inst)
                    if not instances:
                        self.models[name].loaded = False
                    return web.json_response({"instance_id": instance_id})
        return openai_error(404, f"No loaded model instance with id '{instance_id}'")

    def _job_payload(self, job: _Job) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "job_id": job.job_id,
            "status": job.status,
            "total_size_bytes": job.script.total_bytes,
            "downloaded_bytes": job.downloaded(),
            "started_at": job.started_at,
        }
        if job.status == "downloading":
            payload["bytes_per_second"] = float(job.script.total_bytes) / max(1, job.script.steps)
            payload["estimated_completion"] = "2026-01-01T00:01:00.000Z"
        if job.status == "completed":
            payload["completed_at"] = "2026-01-01T00:01:00.000Z"
        return payload

    async def _v1_download(self, request: web.Request) -> web.Response:
        if (guard := self._v1_guard()) is not None:
            return guard
        body = request[JSON_BODY]
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return openai_error(400, "'model' is required")
        name = body["model"]
        if name in self.models:
            return web.json_response({"status": "already_downloaded"})
        script = self.downloadable.get(name)
        if script is None:
            return openai_error(404, f"Could not find model '{name}' to download")
        job = _Job(job_id=f"job_{len(self.jobs) + 1:010x}", model=name, script=script)
        self.jobs[job.job_id] = job
        payload = self._job_payload(job)
        payload["items"] = [
            {"type": "model", "id": name, "size_bytes": script.total_bytes, "publisher": name.split("/")[0]}
        ]
        return web.json_response(payload)

    def _advance(self, job: _Job) -> None:
        if job.status != "downloading":
            return
        job.step += 1
        if job.script.fail_at_step is not None and job.step >= job.script.fail_at_step:
            job.status = "failed"
            return
        if job.step >= job.script.steps:
            job.status = "completed"
            self.models[job.model] = ModelScript(
                loaded=False, size_bytes=job.script.total_bytes, model_type=job.script.model_type
            )

    async def _v1_download_status(self, request: web.Request) -> web.Response:
        if (guard := self._v1_guard()) is not None:
            return guard
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return openai_error(404, "No download job with that id")
        self._advance(job)
        return web.json_response(self._job_payload(job))

    async def _v1_download_status_all(self, request: web.Request) -> web.Response:
        if (guard := self._v1_guard()) is not None:
            return guard
        groups: dict[str, list[dict[str, Any]]] = {"downloading": [], "completed": [], "failed": [], "paused": []}
        for job in self.jobs.values():
            groups.setdefault(job.status, []).append(self._job_payload(job))
        return web.json_response(groups)

    def _v0_entry(self, name: str, script: ModelScript) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "type": "embeddings" if script.model_type == "embedding" else "llm",
            "publisher": name.split("/")[0] if "/" in name else "lmstudio-community",
            "arch": script.family,
            "compatibility_type": "gguf",
            "quantization": script.quantization,
            "state": "loaded" if self.instances.get(name) else "not-loaded",
            "max_context_length": script.context_length,
        }
        if self.instances.get(name):
            entry["loaded_context_length"] = self.instances[name][0]["config"]["context_length"]
        return entry

    async def _v0_models(self, request: web.Request) -> web.Response:
        if (guard := self._v0_guard()) is not None:
            return guard
        return web.json_response({"object": "list", "data": [self._v0_entry(n, s) for n, s in self.models.items()]})

    async def _v0_model(self, request: web.Request) -> web.Response:
        if (guard := self._v0_guard()) is not None:
            return guard
        name = request.match_info["model"]
        script = self.models.get(name)
        if script is None:
            return openai_error(404, f"Model '{name}' not found", code="model_not_found")
        return web.json_response(self._v0_entry(name, script))

    async def _v0_chat(self, request: web.Request) -> web.StreamResponse:
        if (guard := self._v0_guard()) is not None:
            return guard
        return await self.handle_chat(request)
