"""Direct downloads from a Hugging Face hub (or a mirror), resumable and checked byte for byte.

The hub's own API says what a file must be: `POST {base}/api/models/{repo}/paths-info/{revision}`
answers `[{type, path, size, oid, lfs: {oid: <sha256>, size}}]` (the tree listing
`GET {base}/api/models/{repo}/tree/{revision}` is the fallback for mirrors without paths-info).
LFS files are checked against `lfs.oid`, the sha256 of their content; small files kept in git
against `oid`, their git blob SHA-1.

The bytes come from `GET {base}/{repo}/resolve/{revision}/{path}` into `<dest>.part`, resuming
with `Range: bytes=<have>-` when a partial file exists. Only after the digest matches is the file
fsynced and renamed into place (atomic on one filesystem); a mismatch deletes the partial file and
raises ChecksumMismatchError, so a corrupt file never sits where a server would load it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bot.engine.providers.port import ChecksumMismatchError, DownloadError, DownloadProgress
from bot.logs import get_logger, register_secret

log = get_logger(__name__)

DEFAULT_HUB_URL = "https://huggingface.co"
CHUNK_BYTES = 1 << 20
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@dataclass(frozen=True, slots=True)
class HubFile:
    """What the hub promises about one file."""

    repo: str
    path: str
    revision: str
    size: int
    digest: str
    algorithm: str  # "sha256" (LFS) or "git-sha1" (a small file stored in git)


def validate_repo(repo: str) -> str:
    """`owner/name`, refusing anything that could escape the URL path or the destination."""
    if not _REPO_RE.match(repo) or ".." in repo:
        raise DownloadError(
            f"{repo!r} is not a Hugging Face repository id", hint="write it as owner/name, e.g. Qwen/Qwen2.5-0.5B"
        )
    return repo


def validate_path(path: str) -> str:
    """A relative file path inside the repository, without `..` or absolute parts."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts) or "\\" in path:
        raise DownloadError(f"{path!r} is not a file path inside a repository")
    return path


class HubClient:
    """Talks to one hub: file metadata and resumable, verified downloads."""

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_HUB_URL,
        token: str | None = None,
        timeout_s: float = 30.0,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise DownloadError(f"hub URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self._chunk_bytes = chunk_bytes
        headers = {"User-Agent": "orchestrator-hub/1"}
        if token:
            register_secret(token)
            headers["Authorization"] = f"Bearer {token}"
        # httpx drops Authorization when a redirect leaves the hub's origin (CDN URLs are signed).
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            follow_redirects=True,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def file_info(self, repo: str, path: str, *, revision: str = "main") -> HubFile:
        """Size and digest of one file, from paths-info (or the tree listing on older mirrors)."""
        validate_repo(repo)
        validate_path(path)
        if not _REVISION_RE.match(revision) or ".." in revision:
            raise DownloadError(f"{revision!r} is not a revision name")
        api = f"/api/models/{repo}"
        rev = quote(revision, safe="")
        try:
            response = await self._http.post(
                f"{api}/paths-info/{rev}", data={"paths": [path], "expand": "false"}
            )
            if response.status_code in (404, 405) and not _is_hub_error(response):
                response = await self._http.get(
                    f"{api}/tree/{rev}/{quote(path.rsplit('/', 1)[0], safe='/')}"
                    if "/" in path
                    else f"{api}/tree/{rev}"
                )
        except httpx.HTTPError as err:
            raise DownloadError(f"cannot reach the hub at {self.base_url}: {err}") from err
        _raise_for_hub_status(response, repo=repo, path=path)
        try:
            entries = response.json()
        except ValueError as err:
            raise DownloadError(f"the hub answered {response.url} with something that is not JSON") from err
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("path") == path and entry.get("type", "file") == "file":
                return _hub_file(entry, repo=repo, revision=revision)
        raise DownloadError(
            f"{path} is not in {repo}@{revision}", hint="check the exact file name on the model's page"
        )

    async def download(
        self, repo: str, path: str, *, dest: Path, revision: str = "main"
    ) -> AsyncIterator[DownloadProgress]:
        """Fetch `path` to `dest`, resuming a `.part` file; progress events end with one `done`."""
        expected = await self.file_info(repo, path, revision=revision)
        job = f"{repo}/{path}"
        dest, part, have, present = await asyncio.to_thread(_prepare, dest, expected)
        if present:
            yield DownloadProgress(status="already present", downloaded_bytes=expected.size,
                                   total_bytes=expected.size, done=True, job_id=job)  # fmt: skip
            return
        yield DownloadProgress(status="resuming" if have else "starting", downloaded_bytes=have,
                               total_bytes=expected.size, job_id=job)  # fmt: skip
        if have < expected.size:
            async for event in self._fetch(expected, part=part, have=have, job=job):
                yield event
        yield DownloadProgress(status="verifying", downloaded_bytes=expected.size,
                               total_bytes=expected.size, job_id=job)  # fmt: skip
        actual = await asyncio.to_thread(_digest_of, part, expected)  # GBs: keep the loop free
        if actual != expected.digest:
            await asyncio.to_thread(part.unlink, missing_ok=True)
            raise ChecksumMismatchError(
                f"{job}: the downloaded bytes have {expected.algorithm} {actual}, the hub says "
                f"{expected.digest}; the partial file was deleted",
                hint="run the download again; if it repeats, the hub or a proxy serves a corrupt file",
            )
        await asyncio.to_thread(_commit, part, dest)
        log.info("hub.downloaded", repo=repo, path=path, bytes=expected.size, dest=str(dest))
        yield DownloadProgress(status="completed", downloaded_bytes=expected.size,
                               total_bytes=expected.size, done=True, job_id=job)  # fmt: skip

    async def _fetch(self, expected: HubFile, *, part: Path, have: int, job: str) -> AsyncIterator[DownloadProgress]:
        url = f"/{expected.repo}/resolve/{quote(expected.revision, safe='')}/{quote(expected.path, safe='/')}"
        # identity: byte ranges must address the file itself, never a compressed rendering of it
        headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
        started = time.monotonic()
        received = 0
        last_event = 0.0
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code == 416 and have:
                    return  # nothing left to send: the part file is already whole; verification decides
                _raise_for_hub_status(response, repo=expected.repo, path=expected.path)
                mode = "ab"
                if have and response.status_code != 206:
                    have, mode = 0, "wb"  # the server ignored Range: start over
                elif have:
                    _check_content_range(response.headers.get("Content-Range"), have, expected, job)
                with open(part, mode) as handle:  # noqa: ASYNC230 - small appends, the loop stays responsive
                    async for chunk in response.aiter_bytes():  # as received: a break loses nothing
                        if have + received + len(chunk) > expected.size:
                            raise DownloadError(f"{job}: the hub sent more bytes than the file has")
                        handle.write(chunk)
                        received += len(chunk)
                        now = time.monotonic()
                        if now - last_event >= 0.2:
                            last_event = now
                            yield _progress(have + received, expected.size, received, now - started, job)
        except httpx.HTTPError as err:
            raise DownloadError(
                f"{job}: the download broke after {have + received} of {expected.size} bytes: {err}",
                hint="run the same command again: it resumes where it stopped",
            ) from err
        if have + received < expected.size:
            raise DownloadError(
                f"{job}: the hub closed the download after {have + received} of {expected.size} bytes",
                hint="run the same command again: it resumes where it stopped",
            )
        yield _progress(have + received, expected.size, received, time.monotonic() - started, job)


def _progress(done: int, total: int, received: int, elapsed: float, job: str) -> DownloadProgress:
    rate = received / elapsed if elapsed > 0 else None
    return DownloadProgress(
        status="downloading", downloaded_bytes=done, total_bytes=total, bytes_per_s=rate, job_id=job
    )


def _hub_file(entry: dict[str, Any], *, repo: str, revision: str) -> HubFile:
    lfs = entry.get("lfs")
    if isinstance(lfs, dict) and isinstance(lfs.get("oid") or lfs.get("sha256"), str):
        digest = str(lfs.get("oid") or lfs.get("sha256")).lower()
        size = lfs.get("size", entry.get("size"))
        algorithm = "sha256"
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise DownloadError(f"the hub's sha256 for {entry.get('path')} is malformed: {digest!r}")
    else:
        digest = str(entry.get("oid", "")).lower()
        size = entry.get("size")
        algorithm = "git-sha1"
        if not re.fullmatch(r"[0-9a-f]{40}", digest):
            raise DownloadError(f"the hub gives no usable checksum for {entry.get('path')}")
    if not isinstance(size, int) or size < 0:
        raise DownloadError(f"the hub gives no usable size for {entry.get('path')}")
    return HubFile(repo=repo, path=str(entry["path"]), revision=revision, size=size, digest=digest,
                   algorithm=algorithm)  # fmt: skip


def _digest_of(path: Path, expected: HubFile) -> str:
    hasher = hashlib.sha256() if expected.algorithm == "sha256" else hashlib.sha1(usedforsecurity=False)
    if expected.algorithm == "git-sha1":
        hasher.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            hasher.update(block)
    return hasher.hexdigest()


def _check_content_range(header: str | None, have: int, expected: HubFile, job: str) -> None:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (header or "").strip())
    if match is None or int(match.group(1)) != have:
        raise DownloadError(f"{job}: the hub answered a resume with Content-Range {header!r}")
    if match.group(3) != "*" and int(match.group(3)) != expected.size:
        raise DownloadError(f"{job}: the hub's file is {match.group(3)} bytes, its metadata says {expected.size}")


def _is_hub_error(response: httpx.Response) -> bool:
    return "X-Error-Code" in response.headers


def _raise_for_hub_status(response: httpx.Response, *, repo: str, path: str) -> None:
    if response.status_code < 400:
        return
    code = response.headers.get("X-Error-Code", "")
    message = response.headers.get("X-Error-Message", "")
    if response.status_code == 401 or code in ("RepoNotFound", "GatedRepo"):
        raise DownloadError(
            f"{repo} is not available: {message or f'HTTP {response.status_code}'}",
            hint="check the repository id; for gated or private models set HF_TOKEN",
        )
    if code == "EntryNotFound" or response.status_code == 404:
        raise DownloadError(f"{path} is not in {repo}", hint="check the exact file name on the model's page")
    raise DownloadError(f"the hub answered HTTP {response.status_code} for {repo}/{path} {message}".rstrip())


def _prepare(dest: Path, expected: HubFile) -> tuple[Path, Path, int, bool]:
    """(destination, part file, bytes already there, whether the destination is already right)."""
    dest = dest.expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if dest.exists() and dest.stat().st_size == expected.size and _digest_of(dest, expected) == expected.digest:
        return dest, part, expected.size, True
    have = part.stat().st_size if part.exists() else 0
    if have > expected.size:
        part.unlink()  # longer than the file can be: it is not a prefix of it
        have = 0
    return dest, part, have, False


def _commit(part: Path, dest: Path) -> None:
    """Flush the verified bytes, then rename into place (atomic on one filesystem)."""
    _fsync(part)
    os.replace(part, dest)
    _fsync_dir(dest.parent)


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every platform can open a directory; the rename itself is still atomic
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
