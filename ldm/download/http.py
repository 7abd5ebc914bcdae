"""HTTP downloads that resume with Range requests, verify sha256 and only then take the final name.

A download is written to `{dest}.part`; only a complete, verified file is renamed to `dest`, so a
file under its final name is never partial. The lock file records the sha256 of files whose source
publishes no checksum, on first download, and later downloads and `verify` check against it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read
USER_AGENT = "difftalk-download/1.0"


class DownloadError(RuntimeError):
    """A file could not be fetched (network, HTTP status) after the allowed retries."""


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the published or locked one."""


@dataclass(frozen=True)
class Expected:
    """What a downloaded file must hash to: a full sha256 or a published prefix of one."""

    sha256: str
    source: str  # where the value comes from, e.g. "torchvision file name" or "lock file"

    def check(self, path: Path, digest: str) -> None:
        """Raise ChecksumError (naming the file, both values and the source) on a mismatch."""
        if not digest.startswith(self.sha256.lower()):
            raise ChecksumError(
                f"{path}: sha256 {digest} does not match the expected {self.sha256} "
                f"({self.source}): the file is corrupt, truncated or was replaced upstream"
            )


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with (
        open(path, "rb") as fh,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", disable=not progress
        ) as bar,
    ):
        while block := fh.read(CHUNK):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    """Where an unfinished download of `dest` lives."""
    return dest.with_name(dest.name + ".part")


def _open(url: str, offset: int, timeout: float):
    """The HTTP response for `url` from byte `offset` (Range request when offset > 0)."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _total_size(resp, offset: int) -> int | None:
    """Full file size from Content-Range / Content-Length, or None when the server does not say."""
    content_range = resp.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return int(length) + offset if length and length.isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> bool:
    """Append what is missing of `url` to `part`; True when the file is complete."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the part already holds the whole file
            return True
        raise
    with resp:
        if offset and resp.status != 206:
            log.info("%s: the server ignored the Range request; starting over", url)
            offset = 0
        total = _total_size(resp, offset)
        with open(part, "ab" if offset else "wb") as fh, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5],
            disable=not progress,
        ) as bar:  # fmt: skip
            try:
                while block := resp.read(CHUNK):
                    fh.write(block)
                    bar.update(len(block))
            except http.client.IncompleteRead as err:
                fh.write(err.partial)
    size = part.stat().st_size
    if total is not None and size < total:
        log.warning("%s: connection ended at %d of %d bytes", url, size, total)
        return False
    return True


def fetch(
    url: str,
    dest: Path,
    expected: Expected | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    progress: bool = True,
) -> str:
    """Download `url` to `dest`, resuming `{dest}.part`; return the sha256 of the verified file.

    Raises DownloadError when the file cannot be completed after `retries` resumed attempts, and
    ChecksumError (the .part is deleted) when the finished file does not hash to `expected`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    for attempt in range(retries + 1):
        try:
            if _fetch_once(url, part, timeout, progress):
                break
            reason = "connection ended early"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            if isinstance(err, urllib.error.HTTPError) and err.code in (401, 403, 404, 410):
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
            reason = str(err)
        if attempt == retries:
            raise DownloadError(
                f"{url}: incomplete after {retries + 1} attempts ({reason}); {part} keeps what "
                "arrived and the next run resumes from it"
            )
        log.warning("%s: %s; resuming (attempt %d of %d)", url, reason, attempt + 2, retries + 1)
        time.sleep(min(2.0**attempt, 10.0) * 0.1)
    digest = sha256_file(part, progress)
    if expected is not None:
        try:
            expected.check(dest, digest)
        except ChecksumError as err:
            part.unlink()
            raise ChecksumError(f"{err}; the download was deleted, not kept as {dest}") from err
    os.replace(part, dest)
    return digest


class LockFile:
    """JSON map of project-relative path -> {"sha256", "size", "url"}, rewritten atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.exists():
            try:
                self.entries = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ChecksumError(f"{path}: not valid JSON ({err}); fix or delete it") from err

    def get(self, key: str) -> str | None:
        """The recorded sha256 of `key`, or None."""
        entry = self.entries.get(key)
        return entry["sha256"] if entry else None

    def record(self, key: str, sha256: str, size: int, url: str) -> None:
        """Remember a file's checksum and save the lock file (temp + rename)."""
        self.entries[key] = {"sha256": sha256, "size": size, "url": url}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.entries, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)
