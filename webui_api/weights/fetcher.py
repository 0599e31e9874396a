"""Download pinned weight files into A1111's folders: resumable, checked, atomic.

A1111 downloads a missing upscaler, face restorer or interrogator the first time it is
used. This server does the same, with the safety an unattended server needs:

* the bytes are checked against the registry's sha256 (a file without a pinned digest is
  fetched only when the operator opted in with `--allow-unverified`);
* a download lands in a staging folder (`<models>/.downloads`) and is renamed into its A1111
  folder only once complete and verified, so a scan never sees half a file; a mismatch
  deletes the staged bytes, an interrupted download keeps them and resumes with an HTTP
  Range request next time;
* `--offline` (or HF_HUB_OFFLINE=1, read by the CLI) forbids every download: a missing file
  is then a 400 naming the file, its folder and the command that fetches it;
* `--models-mirror URL` replaces the origin (scheme and host) of every pinned URL, for
  air-gapped mirrors.

`ensure` blocks (the CLI and worker-free code call it); `ensure_async` runs it in a thread
so a route can await a download without holding the event loop or the generation worker.
One download per file runs at a time; concurrent callers wait for it and share the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.client import HTTPException, IncompleteRead
from pathlib import Path
from typing import Any, BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from webui_api.errors import ApiError, BadRequest
from webui_api.weights.folders import WeightFolders
from webui_api.weights.registry import WeightFile, WeightsRegistry

CHUNK_BYTES = 1 << 20
STAGING_FOLDER = ".downloads"
USER_AGENT = "webui-api weights fetcher"

ProgressCallback = Callable[[WeightFile, int, "int | None"], None]  # (file, bytes so far, total or None)


def fetch_command(entry: WeightFile) -> str:
    """The shell command that fetches `entry` (quoted: names contain spaces)."""
    flag = "" if entry.verified else " --allow-unverified"
    return f'webui-api models fetch "{entry.name}"{flag}'


class WeightsOffline(BadRequest):
    """A missing file while downloads are forbidden (--offline / HF_HUB_OFFLINE=1)."""

    def __init__(self, entry: WeightFile, folder: Path) -> None:
        super().__init__(
            f"{entry.name}: weights file {entry.filename} is not in {folder} and downloads are off "
            f"(--offline or HF_HUB_OFFLINE=1); fetch it with `{fetch_command(entry)}` "
            f"(add --models-mirror URL for a local mirror) or copy the file there",
            errors=f"missing {folder / entry.filename}",
        )


class WeightsUnverified(BadRequest):
    """A file with no pinned sha256, while --allow-unverified is off."""

    def __init__(self, entry: WeightFile, folder: Path) -> None:
        super().__init__(
            f"{entry.name}: weights file {entry.filename} is not in {folder} and has no pinned sha256, so it is "
            f"not downloaded automatically; fetch it with `{fetch_command(entry)}`, start the server with "
            f"--allow-unverified, or copy the file there",
            errors=f"missing {folder / entry.filename}",
        )


class DownloadFailed(ApiError):
    """The origin (or mirror) did not deliver the file (502: the upstream failed, not the caller)."""

    status_code = 502


class ChecksumMismatch(DownloadFailed):
    """Downloaded bytes whose sha256 is not the pinned one; nothing is kept."""

    def __init__(self, entry: WeightFile, url: str, got: str) -> None:
        super().__init__(
            f"{entry.name}: {entry.filename} downloaded from {url} has sha256 {got}, expected {entry.sha256}; "
            "the download was discarded",
            errors="sha256 mismatch",
        )


@dataclass(frozen=True)
class FetchPolicy:
    """What the fetcher may do. The default forbids downloads: only the CLI turns them on."""

    offline: bool = True
    mirror: str | None = None  # replaces scheme://host of every pinned URL
    allow_unverified: bool = False
    timeout: float = 60.0  # seconds without data before a connection is given up

    @classmethod
    def from_settings(cls, settings: Any) -> FetchPolicy:
        return cls(
            offline=bool(getattr(settings, "weights_offline", True)),
            mirror=getattr(settings, "models_mirror", None),
            allow_unverified=bool(getattr(settings, "allow_unverified_weights", False)),
        )


def mirrored_url(url: str, mirror: str | None) -> str:
    """`url` with its origin replaced by `mirror` (which may carry a path prefix)."""
    if not mirror:
        return url
    parts = urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return mirror.rstrip("/") + tail


class WeightsFetcher:
    """Resolves registry names to files in A1111's folders, downloading what is missing."""

    def __init__(self, registry: WeightsRegistry, folders: WeightFolders, policy: FetchPolicy | None = None,
                 progress: ProgressCallback | None = None) -> None:
        self.registry = registry
        self.folders = folders
        self.policy = policy if policy is not None else FetchPolicy()
        self.progress = progress
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # Downloads of different files run at once and share the staging folder: it is made and
        # removed under this lock, and removed only by the last download that used it.
        self._staging_guard = threading.Lock()
        self._staging_users = 0
        # Optional files whose download failed: not tried again by this server (a preview decoder
        # that cannot be had must not cost every later job a download attempt and its timeout).
        self._given_up: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Any, registry: WeightsRegistry | None = None,
                      progress: ProgressCallback | None = None) -> WeightsFetcher:
        return cls(registry or WeightsRegistry.builtin(), WeightFolders.from_settings(settings),
                   FetchPolicy.from_settings(settings), progress)

    # ------------------------------------------------------------------ lookups

    def entry(self, name: str) -> WeightFile:
        return self.registry.get(name)

    def folder(self, name: str) -> Path:
        return self.folders.folder(self.entry(name).folder)

    def target(self, name: str) -> Path:
        """Where the file lives (or will, once fetched)."""
        entry = self.entry(name)
        return self.folders.folder(entry.folder) / entry.filename

    def is_present(self, name: str) -> bool:
        return self.target(name).is_file()

    def url(self, name: str) -> str:
        return mirrored_url(self.entry(name).url, self.policy.mirror)

    def staging_path(self, name: str) -> Path:
        entry = self.entry(name)
        return self.folders.models_dir / STAGING_FOLDER / f"{entry.folder}--{entry.filename}.part"

    def give_up(self, name: str) -> None:
        """Stop offering an optional file whose download failed (until the server restarts)."""
        self._given_up.add(self.entry(name).name)

    def gave_up(self, name: str) -> bool:
        return self.entry(name).name in self._given_up

    def check_fetchable(self, name: str) -> None:
        """Raise the 400 a missing file would get, without downloading anything."""
        if self.is_present(name):
            return
        entry = self.entry(name)
        if self.policy.offline:
            raise WeightsOffline(entry, self.folder(name))
        if not entry.verified and not self.policy.allow_unverified:
            raise WeightsUnverified(entry, self.folder(name))

    # ------------------------------------------------------------------ fetching

    def ensure(self, name: str) -> Path:
        """The file's path, downloading and verifying it first when it is missing."""
        target = self.target(name)
        if target.is_file():
            return target
        self.check_fetchable(name)
        with self._lock_for(self.entry(name).name):
            if not target.is_file():  # another caller may have fetched it meanwhile
                self._download(self.entry(name), target)
        return target

    def ensure_all(self, names: Iterable[str]) -> list[Path]:
        return [self.ensure(name) for name in names]

    async def ensure_async(self, name: str) -> Path:
        """`ensure` in a worker thread: the event loop and the generation worker keep running."""
        if self.is_present(name):
            return self.target(name)
        self.check_fetchable(name)  # refuse fast, before a thread is used
        return await asyncio.to_thread(self.ensure, name)

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _download(self, entry: WeightFile, target: Path) -> None:
        part = self.staging_path(entry.name)
        self._enter_staging(part.parent)
        try:
            self._download_staged(entry, part, target)
        finally:
            self._leave_staging(part.parent)

    def _enter_staging(self, folder: Path) -> None:
        with self._staging_guard:
            self._staging_users += 1
            folder.mkdir(parents=True, exist_ok=True)

    def _leave_staging(self, folder: Path) -> None:
        with self._staging_guard:
            self._staging_users -= 1
            if self._staging_users == 0:
                _remove_if_empty(folder)

    def _download_staged(self, entry: WeightFile, part: Path, target: Path) -> None:
        url = mirrored_url(entry.url, self.policy.mirror)
        digest = _download_to(part, url, entry, self.policy.timeout, self.progress)
        if entry.sha256 is not None and digest != entry.sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(entry, url, digest)
        if entry.size is not None and entry.sha256 is None and part.stat().st_size != entry.size:
            size = part.stat().st_size
            part.unlink(missing_ok=True)
            raise DownloadFailed(f"{entry.name}: {entry.filename} from {url} is {size} bytes, expected {entry.size}",
                                 errors="size mismatch")
        _publish(part, target)


def _download_to(part: Path, url: str, entry: WeightFile, timeout: float, progress: ProgressCallback | None) -> str:
    """Fill `part` with the file at `url`, resuming from what it already holds; its sha256."""
    hasher = hashlib.sha256()
    offset = _hash_existing(part, hasher)
    try:
        response = _open(url, offset, timeout)
    except HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: the staged file is complete
            return hasher.hexdigest()
        raise DownloadFailed(f"{entry.name}: {url} answered HTTP {exc.code}", errors=str(exc.reason)) from exc
    except (URLError, OSError) as exc:
        raise DownloadFailed(f"{entry.name}: cannot download {url}", errors=str(exc)) from exc
    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:  # a server that ignores Range sends the whole file again
            offset, hasher = 0, hashlib.sha256()
        expected = _expected_size(response, offset)
        with part.open("ab" if resumed else "wb") as out:
            _copy(response, out, hasher, _Progress(entry, offset, expected or entry.size, progress), expected)
    return hasher.hexdigest()


def _hash_existing(part: Path, hasher: Any) -> int:
    if not part.is_file():
        return 0
    size = 0
    with part.open("rb") as existing:
        while chunk := existing.read(CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return size


def _open(url: str, offset: int, timeout: float) -> Any:
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)


def _expected_size(response: Any, offset: int) -> int | None:
    """The whole file's size as this response announces it (staged bytes + Content-Length)."""
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.isdigit() else None


@dataclass
class _Progress:
    entry: WeightFile
    done: int
    total: int | None
    callback: ProgressCallback | None

    def advance(self, count: int) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.entry, self.done, self.total)


def _copy(response: BinaryIO, out: BinaryIO, hasher: Any, progress: _Progress, expected: int | None) -> None:
    """Stream the body into the staged file; a broken connection keeps every byte received
    (the next attempt resumes after them) and is reported as DownloadFailed."""
    progress.advance(0)
    start = progress.done
    try:
        while chunk := response.read(CHUNK_BYTES):
            _append(out, hasher, progress, chunk)
        if expected is not None and progress.done < expected:  # http.client's read(n) ends quietly at EOF
            raise IncompleteRead(b"", expected - progress.done)
    except IncompleteRead as exc:
        _append(out, hasher, progress, exc.partial)
        raise DownloadFailed(f"{progress.entry.name}: the connection closed after {progress.done - start} bytes "
                             f"({progress.done} of {progress.total or '?'} staged); "
                             "run the fetch again to resume", errors="incomplete download") from exc
    except (OSError, HTTPException) as exc:
        raise DownloadFailed(f"{progress.entry.name}: download interrupted after {progress.done} bytes; "
                             "run the fetch again to resume", errors=str(exc)) from exc
    finally:
        out.flush()
        os.fsync(out.fileno())


def _append(out: BinaryIO, hasher: Any, progress: _Progress, chunk: bytes) -> None:
    out.write(chunk)
    hasher.update(chunk)
    progress.advance(len(chunk))


def _remove_if_empty(folder: Path) -> None:
    """The staging folder goes away once nothing is staged (another download may still be)."""
    with contextlib.suppress(OSError):  # not empty (or already gone)
        folder.rmdir()


def _publish(part: Path, target: Path) -> None:
    """Move the verified file into its folder in one step (a rename; across file systems a
    copy to a hidden name beside the target first, then the rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(part, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        hidden = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(part, hidden)
        os.replace(hidden, target)
        part.unlink(missing_ok=True)
