"""Direct Hugging Face downloads against a local hub: resume, checksum, atomic rename, hostile input."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.engine.providers.hub import HubClient
from bot.engine.providers.port import ChecksumMismatchError, DownloadError, DownloadProgress
from tests.fakes.hub import FakeHub

REPO = "acme/tiny-gguf"
CONTENT = os.urandom(300_000)


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with FakeHub() as server:
        server.add_file(REPO, "tiny.Q4_K_M.gguf", CONTENT)
        corrupt = bytearray(CONTENT)
        corrupt[150_000] ^= 0xFF
        server.add_file(REPO, "twin.Q4_K_M.gguf", CONTENT, served=bytes(corrupt))
        server.add_file(REPO, "config.json", b'{"arch": "llama"}', lfs=False)
        yield server


async def _run(client: HubClient, path: str, dest: Path) -> list[DownloadProgress]:
    return [event async for event in client.download(REPO, path, dest=dest)]


async def test_download_verifies_sha256_and_renames_atomically(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "models" / "tiny.gguf"
    async with HubClient(base_url=hub.url, chunk_bytes=32_768) as client:
        events = await _run(client, "tiny.Q4_K_M.gguf", dest)
    assert dest.read_bytes() == CONTENT
    assert not dest.with_name("tiny.gguf.part").exists()
    assert events[-1].done
    assert events[-1].status == "completed"
    assert next(e.status for e in events) == "starting"
    assert "verifying" in [e.status for e in events]
    fractions = [e.fraction for e in events if e.fraction is not None]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    form = hub.calls("paths-info")[0].form
    assert form["paths"] == ["tiny.Q4_K_M.gguf"]


async def test_interrupted_download_resumes_with_range(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.gguf"
    hub.cut_after_bytes = 100_000
    async with HubClient(base_url=hub.url) as client:
        with pytest.raises(DownloadError, match="resumes where it stopped"):
            await _run(client, "tiny.Q4_K_M.gguf", dest)
        part = dest.with_name("tiny.gguf.part")
        assert not dest.exists()
        have = part.stat().st_size
        assert 0 < have <= 100_000
        assert part.read_bytes() == CONTENT[:have]

        events = await _run(client, "tiny.Q4_K_M.gguf", dest)
    assert events[0].status == "resuming"
    assert events[0].downloaded_bytes == have
    assert hub.calls("resolve")[-1].headers["Range"] == f"bytes={have}-"
    assert dest.read_bytes() == CONTENT
    assert not part.exists()


async def test_checksum_mismatch_deletes_the_file(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "twin.gguf"
    async with HubClient(base_url=hub.url) as client:
        with pytest.raises(ChecksumMismatchError) as caught:
            await _run(client, "twin.Q4_K_M.gguf", dest)
    assert hashlib.sha256(CONTENT).hexdigest() in str(caught.value)
    assert not dest.exists()
    assert not dest.with_name("twin.gguf.part").exists()


async def test_server_ignoring_range_restarts_cleanly(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.gguf"
    dest.with_name("tiny.gguf.part").write_bytes(CONTENT[:5000])
    hub.ignore_range = True
    async with HubClient(base_url=hub.url) as client:
        await _run(client, "tiny.Q4_K_M.gguf", dest)
    assert dest.read_bytes() == CONTENT


async def test_stale_garbage_part_is_caught_by_the_checksum(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.gguf"
    dest.with_name("tiny.gguf.part").write_bytes(b"\0" * 5000)  # not a prefix of the real file
    async with HubClient(base_url=hub.url) as client:
        with pytest.raises(ChecksumMismatchError):
            await _run(client, "tiny.Q4_K_M.gguf", dest)
        assert not dest.with_name("tiny.gguf.part").exists()
        await _run(client, "tiny.Q4_K_M.gguf", dest)  # the retry starts from zero and succeeds
    assert dest.read_bytes() == CONTENT


async def test_small_git_file_is_checked_by_git_blob_sha1(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "config.json"
    async with HubClient(base_url=hub.url) as client:
        info = await client.file_info(REPO, "config.json")
        await _run(client, "config.json", dest)
    assert info.algorithm == "git-sha1"
    assert dest.read_bytes() == b'{"arch": "llama"}'


async def test_tree_listing_is_used_when_paths_info_is_missing(hub: FakeHub, tmp_path: Path) -> None:
    hub.paths_info_enabled = False
    async with HubClient(base_url=hub.url) as client:
        info = await client.file_info(REPO, "tiny.Q4_K_M.gguf")
    assert info.digest == hashlib.sha256(CONTENT).hexdigest()
    assert hub.calls("tree")


async def test_present_file_is_not_downloaded_again(hub: FakeHub, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.gguf"
    async with HubClient(base_url=hub.url) as client:
        await _run(client, "tiny.Q4_K_M.gguf", dest)
        before = len(hub.calls("resolve"))
        events = await _run(client, "tiny.Q4_K_M.gguf", dest)
    assert events[-1].status == "already present"
    assert len(hub.calls("resolve")) == before


@pytest.mark.parametrize(
    ("repo", "path"),
    [("../etc", "passwd"), ("acme/tiny-gguf", "../../secret"), ("acme/tiny-gguf", "/abs"), ("no-slash", "x")],
)
async def test_hostile_names_are_refused_before_any_request(hub: FakeHub, tmp_path: Path, repo: str, path: str) -> None:
    async with HubClient(base_url=hub.url) as client:
        with pytest.raises(DownloadError):
            [event async for event in client.download(repo, path, dest=tmp_path / "x")]
    assert hub.recorded == []


async def test_missing_file_and_repo_give_clear_errors(hub: FakeHub, tmp_path: Path) -> None:
    async with HubClient(base_url=hub.url) as client:
        with pytest.raises(DownloadError, match="is not in"):
            await client.file_info(REPO, "nope.gguf")
        with pytest.raises(DownloadError, match="HF_TOKEN"):
            await client.file_info("acme/does-not-exist", "x.gguf")


async def test_token_is_sent_to_the_hub(tmp_path: Path) -> None:
    async with FakeHub(token="hf_secret_token") as hub:
        hub.add_file(REPO, "tiny.gguf", b"abc")
        async with HubClient(base_url=hub.url, token="hf_secret_token") as client:
            await _run(client, "tiny.gguf", tmp_path / "t.gguf")
        assert hub.calls("resolve")[0].headers["Authorization"] == "Bearer hf_secret_token"
