"""A local Hugging Face hub: paths-info, tree listing and `resolve` downloads with Range support.

    async with FakeHub() as hub:
        hub.add_file("acme/tiny", "model.gguf", content)                 # LFS file, honest
        hub.add_file("acme/tiny", "bad.gguf", content, served=corrupt)   # metadata of `content`, serves `corrupt`
        hub.add_file("acme/tiny", "config.json", b"{}", lfs=False)       # small file kept in git (SHA-1 oid)
        hub.cut_after_bytes = 1000        # the next download drops the connection after 1000 bytes
        client = HubClient(base_url=hub.url)
        assert hub.calls("resolve")[-1].headers["Range"] == "bytes=1000-"

Wire shapes follow huggingface_hub (`hf_api.py` get_paths_info / list_repo_tree, `file_download.py`):
entries `{type, oid, size, path, lfs: {oid, size, pointerSize}}`; resolve answers carry
`X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size`, `Accept-Ranges`, and 206 + `Content-Range` for
ranges (416 with `Content-Range: bytes */SIZE` past the end); unknown repos answer 401 and missing
files 404 with `X-Error-Code: EntryNotFound`, as the real hub does.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._loopback import LoopbackServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubEntry:
    """One file in a repository: what the metadata promises and what `resolve` actually sends."""

    path: str
    content: bytes
    lfs: bool = True
    served: bytes | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        return hashlib.sha1(f"blob {len(self.content)}\0".encode() + self.content).hexdigest()  # noqa: S324

    def body(self) -> bytes:
        return self.content if self.served is None else self.served

    def as_json(self) -> dict[str, Any]:
        if not self.lfs:
            return {"type": "file", "oid": self.git_oid, "size": len(self.content), "path": self.path}
        pointer = hashlib.sha1(self.sha256.encode()).hexdigest()  # noqa: S324 - an id, like the pointer blob's
        return {
            "type": "file",
            "oid": pointer,
            "size": len(self.content),
            "lfs": {"oid": self.sha256, "size": len(self.content), "pointerSize": 134},
            "path": self.path,
        }


@dataclass(frozen=True)
class HubCall:
    """One request as it arrived."""

    kind: str  # "paths-info", "tree" or "resolve"
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, list[str]] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


class FakeHub(LoopbackServer):
    """A hub peer on 127.0.0.1, port 0."""

    def __init__(self, *, token: str | None = None) -> None:
        super().__init__()
        self.repos: dict[str, dict[str, HubEntry]] = {}
        self.token = token
        self.recorded: list[HubCall] = []
        self.cut_after_bytes: int | None = None
        self.ignore_range = False
        self.paths_info_enabled = True

    def add_file(
        self, repo: str, path: str, content: bytes, *, lfs: bool = True, served: bytes | None = None
    ) -> HubEntry:
        """Publish a file; `served` makes `resolve` send other bytes than the metadata describes."""
        entry = HubEntry(path=path, content=content, lfs=lfs, served=served)
        self.repos.setdefault(repo, {})[path] = entry
        return entry

    def calls(self, kind: str | None = None) -> list[HubCall]:
        """Requests that arrived, optionally of one kind."""
        return [call for call in self.recorded if kind is None or call.kind == kind]

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/models/{owner}/{name}/paths-info/{revision}", self._paths_info)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}", self._tree)
        app.router.add_get("/api/models/{owner}/{name}/tree/{revision}/{sub:.+}", self._tree)
        app.router.add_route("*", "/{owner}/{name}/resolve/{revision}/{path:.+}", self._resolve)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return self.token is None or request.headers.get("Authorization") == f"Bearer {self.token}"

    def _repo(self, request: web.Request) -> dict[str, HubEntry] | None:
        if not self._authorised(request):
            return None
        return self.repos.get(f"{request.match_info['owner']}/{request.match_info['name']}")

    @staticmethod
    def _repo_not_found() -> web.Response:
        # The real hub hides unknown and private repos alike behind a 401 for anonymous callers.
        message = "Invalid username or password."
        return web.json_response({"error": message}, status=401, headers={"X-Error-Message": message})

    async def _paths_info(self, request: web.Request) -> web.Response:
        form = await request.post()
        paths = [str(value) for value in form.getall("paths", [])]
        expand = [str(value) for value in form.getall("expand", [])]
        form_seen = {"paths": paths, "expand": expand}
        call = HubCall("paths-info", request.method, request.path, dict(request.headers), form_seen)
        self.recorded.append(call)
        if not self.paths_info_enabled:
            return web.Response(status=404, text="Not Found")
        repo = self._repo(request)
        if repo is None:
            return self._repo_not_found()
        return web.json_response([repo[p].as_json() for p in paths if p in repo])

    async def _tree(self, request: web.Request) -> web.Response:
        self.recorded.append(HubCall("tree", request.method, request.path, dict(request.headers)))
        repo = self._repo(request)
        if repo is None:
            return self._repo_not_found()
        sub = request.match_info.get("sub", "").strip("/")
        prefix = f"{sub}/" if sub else ""
        entries = [
            entry.as_json()
            for path, entry in sorted(repo.items())
            if path.startswith(prefix) and "/" not in path[len(prefix) :]
        ]
        return web.json_response(entries)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self.recorded.append(HubCall("resolve", request.method, request.path, dict(request.headers)))
        repo = self._repo(request)
        if repo is None:
            return self._repo_not_found()
        entry = repo.get(request.match_info["path"])
        if entry is None:
            return web.Response(status=404, text="Entry not found",
                                headers={"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found",
                                         "X-Repo-Commit": COMMIT})  # fmt: skip
        body = entry.body()
        etag = f'"{entry.sha256 if entry.lfs else entry.git_oid}"'
        headers = {
            "X-Repo-Commit": COMMIT,
            "ETag": etag,
            "X-Linked-Etag": etag,
            "X-Linked-Size": str(len(entry.content)),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start = 0
        status = 200
        range_header = request.headers.get("Range")
        if range_header and not self.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", range_header.strip())
            if match is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            start = int(match.group(1))
            if start >= len(body):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(body)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        payload = body[start:]
        headers["Content-Length"] = str(len(payload))
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        cut = self.cut_after_bytes
        if cut is not None:
            self.cut_after_bytes = None  # one broken download, then the hub behaves
            await response.write(payload[:cut])
            transport = request.transport
            if transport is not None:
                while transport.get_write_buffer_size():  # let the bytes leave before cutting
                    await asyncio.sleep(0.001)
                transport.abort()
            return response
        for offset in range(0, len(payload), 64 * 1024):
            await response.write(payload[offset : offset + 64 * 1024])
        await response.write_eof()
        return response
