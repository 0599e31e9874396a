"""The weights fetcher against a loopback mirror: verified download, mismatch refused with
nothing left behind, resume after a dropped connection, offline and unverified refusals."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from tests.weights.mirror import MirrorState, serve_mirror
from webui_api.weights import (
    ChecksumMismatch,
    DownloadFailed,
    FetchPolicy,
    WeightFile,
    WeightFolders,
    WeightsFetcher,
    WeightsOffline,
    WeightsRegistry,
    WeightsUnverified,
    mirrored_url,
)
from webui_api.weights.registry import UPSCALER

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)  # > 2 chunks, so a cut leaves whole chunks staged
SHA = hashlib.sha256(PAYLOAD).hexdigest()
ORIGIN_PATH = "/owner/project/releases/download/v1/tiny_x4.pth"


def tiny_entry(sha256: str | None = SHA, size: int | None = len(PAYLOAD)) -> WeightFile:
    return WeightFile("Tiny 4x", UPSCALER, "RealESRGAN", "tiny_x4.pth", f"https://example.invalid{ORIGIN_PATH}",
                      sha256, size, "test", 4)


def make_fetcher(models: Path, mirror: str | None, entry: WeightFile | None = None, **policy: object) -> WeightsFetcher:
    registry = WeightsRegistry.builtin().with_entries(entry or tiny_entry())
    return WeightsFetcher(registry, WeightFolders(models), FetchPolicy(offline=False, mirror=mirror, **policy))  # type: ignore[arg-type]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_mirror_replaces_the_origin_only():
    url = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
    assert mirrored_url(url, "http://10.0.0.5:8080/mirror/") == (
        "http://10.0.0.5:8080/mirror/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth")
    assert mirrored_url(url, None) == url


def test_fetch_success_lands_verified_file_in_a1111_folder(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD})
    seen: list[int] = []
    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror)
        fetcher.progress = lambda entry, done, total: seen.append(done)
        path = fetcher.ensure("Tiny 4x")
    assert path == tmp_path / "RealESRGAN" / "tiny_x4.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert files_under(tmp_path) == ["RealESRGAN/tiny_x4.pth"]  # nothing staged is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RealESRGAN"]  # nor the staging folder
    assert seen[-1] == len(PAYLOAD)
    assert state.requests == [(ORIGIN_PATH, None)]


def test_present_file_is_not_downloaded_again(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD})
    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror)
        fetcher.ensure("Tiny 4x")
        fetcher.ensure("tiny 4X")  # names are case-insensitive
    assert len(state.requests) == 1


def test_sha_mismatch_is_refused_and_nothing_is_left(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD[:-1] + b"\x00"})
    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror)
        with pytest.raises(ChecksumMismatch) as refused:
            fetcher.ensure("Tiny 4x")
    assert refused.value.status_code == 502
    assert SHA in refused.value.detail
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_range(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD}, cut_after={ORIGIN_PATH: 2 * 1024 * 1024 + 500})
    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror)
        with pytest.raises(DownloadFailed, match="resume"):
            fetcher.ensure("Tiny 4x")
        assert not (tmp_path / "RealESRGAN" / "tiny_x4.pth").exists()  # the A1111 folder holds no half file
        staged = fetcher.staging_path("Tiny 4x")
        assert staged.stat().st_size == 2 * 1024 * 1024 + 500
        path = fetcher.ensure("Tiny 4x")
    assert path.read_bytes() == PAYLOAD
    assert state.requests == [(ORIGIN_PATH, None), (ORIGIN_PATH, f"bytes={2 * 1024 * 1024 + 500}-")]
    assert files_under(tmp_path) == ["RealESRGAN/tiny_x4.pth"]


def test_server_ignoring_range_restarts_cleanly(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD}, cut_after={ORIGIN_PATH: 1000}, ignore_range=True)
    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror)
        with pytest.raises(DownloadFailed):
            fetcher.ensure("Tiny 4x")
        assert fetcher.ensure("Tiny 4x").read_bytes() == PAYLOAD


def test_offline_refusal_names_file_folder_and_command(tmp_path):
    fetcher = WeightsFetcher(WeightsRegistry.builtin(), WeightFolders(tmp_path), FetchPolicy(offline=True))
    with pytest.raises(WeightsOffline) as refused:
        fetcher.ensure("R-ESRGAN 4x+")
    detail = refused.value.detail
    assert refused.value.status_code == 400
    assert "RealESRGAN_x4plus.pth" in detail
    assert str(tmp_path / "RealESRGAN") in detail
    assert 'webui-api models fetch "R-ESRGAN 4x+"' in detail
    assert files_under(tmp_path) == []


def test_default_policy_never_downloads(tmp_path):
    fetcher = WeightsFetcher(WeightsRegistry.builtin(), WeightFolders(tmp_path))
    with pytest.raises(WeightsOffline):
        fetcher.ensure("ESRGAN_4x")


def test_unverified_needs_opt_in(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD})
    with serve_mirror(state) as mirror:
        strict = make_fetcher(tmp_path, mirror, tiny_entry(sha256=None))
        with pytest.raises(WeightsUnverified, match="--allow-unverified"):
            strict.ensure("Tiny 4x")
        assert state.requests == []
        lenient = make_fetcher(tmp_path, mirror, tiny_entry(sha256=None), allow_unverified=True)
        assert lenient.ensure("Tiny 4x").read_bytes() == PAYLOAD


def test_unverified_size_mismatch_is_refused(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD[:100]})
    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror, tiny_entry(sha256=None), allow_unverified=True)
        with pytest.raises(DownloadFailed, match="expected"):
            fetcher.ensure("Tiny 4x")
    assert files_under(tmp_path) == []


def test_missing_on_mirror_is_a_clear_failure(tmp_path):
    with serve_mirror(MirrorState()) as mirror:
        with pytest.raises(DownloadFailed, match="404"):
            make_fetcher(tmp_path, mirror).ensure("Tiny 4x")
    assert files_under(tmp_path) == []


def test_concurrent_async_callers_share_one_download(tmp_path):
    state = MirrorState(files={ORIGIN_PATH: PAYLOAD})

    async def both(fetcher: WeightsFetcher) -> list[Path]:
        return list(await asyncio.gather(fetcher.ensure_async("Tiny 4x"), fetcher.ensure_async("Tiny 4x")))

    with serve_mirror(state) as mirror:
        fetcher = make_fetcher(tmp_path, mirror)
        paths = asyncio.run(both(fetcher))
    assert paths[0] == paths[1]
    assert len(state.requests) == 1
