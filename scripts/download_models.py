"""Download, verify and place every weight file DiffTalk uses, so no command needs a path after.

Examples:
    python scripts/download_models.py all
    python scripts/download_models.py vq-f4 lpips-alex syncnet
    python scripts/download_models.py all --offline    # 'URL -> path' lines, to copy files by hand
    python scripts/download_models.py all --verify     # check the installed files only

Downloads resume (HTTP Range) from {file}.part; a file takes its final name only once complete and
verified. Published checksums are checked; for files without one the sha256 is recorded in
models/checksums.lock.json on first download and checked afterwards. A file copied by hand to its
path is verified and used as if downloaded. Exit code 1 if anything failed or did not verify.
"""

from __future__ import annotations

import argparse
import logging
import sys
import zipfile
from pathlib import Path

from ldm.download import setup_logging
from ldm.download.http import ChecksumError, DownloadError, Expected, LockFile, fetch, sha256_file
from ldm.download.models import MODELS, Asset, Model

log = logging.getLogger("download_models")

ROOT = Path(__file__).resolve().parents[1]
LOCK_NAME = "models/checksums.lock.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    table = "\n".join(f"  {m.name:<11} {m.what}" for m in MODELS.values())
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog="models:\n" + table,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="model names (below) or 'all'")
    p.add_argument("--root", type=Path, default=ROOT, help="project root (default: this clone)")
    p.add_argument("--offline", action="store_true", help="print 'URL -> path' lines only")
    p.add_argument("--verify", action="store_true", help="verify installed files only")
    p.add_argument("--retries", type=int, default=5, help="resumed attempts per file")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n != "all" and n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from: all {' '.join(MODELS)}")
    return args


def selected(names: list[str]) -> list[Model]:
    """The models named, in table order ('all' = every model)."""
    return [m for m in MODELS.values() if "all" in names or m.name in names]


def expected_for(path: str, asset: Asset | None, lock: LockFile) -> Expected | None:
    """The checksum a file must match: the published one, else the lock file's, else none yet."""
    if asset is not None and asset.sha256:
        return Expected(asset.sha256, asset.checksum_source)
    locked = lock.get(path)
    return Expected(locked, f"{LOCK_NAME}, recorded at the first download") if locked else None


def check_file(root: Path, path: str, asset: Asset | None, lock: LockFile, url: str) -> None:
    """Verify an existing file against its expected checksum, locking it when none is known; a
    file that does not match is renamed to {path}.rejected."""
    digest = sha256_file(root / path, progress=sys.stderr.isatty())
    expected = expected_for(path, asset, lock)
    if expected is not None:
        try:
            expected.check(root / path, digest)
        except ChecksumError as err:
            (root / path).replace(root / f"{path}.rejected")
            raise ChecksumError(f"{err}; moved aside to {path}.rejected") from err
    if lock.get(path) != digest:
        lock.record(path, digest, (root / path).stat().st_size, url)
        log.info("%s: sha256 %s recorded in %s", path, digest, LOCK_NAME)


def offline_lines(root: Path, models: list[Model]) -> list[str]:
    """One 'URL -> absolute path' line per file to fetch by hand."""
    return [f"{a.url} -> {root / a.path}" for m in models for a in m.assets]


def install(root: Path, model: Model, lock: LockFile, retries: int) -> None:
    """Make the model's final files exist and verify, downloading and finishing as needed."""
    finals = model.final_files()
    if all((root / p).is_file() for p in finals):
        for path in finals:
            asset = next((a for a in model.assets if a.path == path), None)
            check_file(root, path, asset, lock, asset.url if asset else "")
        log.info("%s: already installed and verified", model.name)
        return
    for asset in model.assets:
        dest = root / asset.path
        if dest.is_file():
            log.info("%s: present, verifying", asset.path)
            check_file(root, asset.path, asset, lock, asset.url)
            continue
        log.info("%s: %s (~%g MB) -> %s", model.name, asset.url, asset.size_mb, asset.path)
        expected = expected_for(asset.path, asset, lock)
        digest = fetch(asset.url, dest, expected, retries, progress=sys.stderr.isatty())
        if lock.get(asset.path) != digest:
            lock.record(asset.path, digest, dest.stat().st_size, asset.url)
    if model.finish is not None:
        log.info("%s: %s", model.name, model.finish_help or "finishing")
        model.finish(root, model)
        for path in model.products:
            lock.record(path, sha256_file(root / path), (root / path).stat().st_size, "")
    log.info("%s: installed at %s", model.name, ", ".join(finals))


def verify(root: Path, model: Model, lock: LockFile) -> list[str]:
    """Problems with the model's installed files (empty list: all present and verified)."""
    problems = []
    for path in model.final_files():
        asset = next((a for a in model.assets if a.path == path), None)
        expected = expected_for(path, asset, lock)
        if not (root / path).is_file():
            problems.append(f"{path}: missing (python scripts/download_models.py {model.name})")
        elif expected is None:
            problems.append(f"{path}: no checksum known yet (not downloaded by this script)")
        else:
            try:
                expected.check(root / path, sha256_file(root / path))
            except ChecksumError as err:
                problems.append(str(err))
    return problems


def main(argv: list[str] | None = None) -> int:
    """Install (or list, or verify) the named models; 0 when all succeeded."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    models = selected(args.names)
    if args.offline:
        sys.stdout.write("".join(line + "\n" for line in offline_lines(args.root, models)))
        for m in models:
            if m.finish_help:
                log.info("%s: after copying, %s", m.name, m.finish_help)
        return 0
    try:
        lock = LockFile(args.root / LOCK_NAME)
    except ChecksumError as err:
        log.error("%s", err)
        return 1
    if args.verify:
        problems = [p for m in models for p in verify(args.root, m, lock)]
        for p in problems:
            log.error("%s", p)
        log.info("verify: %d model(s), %d problem(s)", len(models), len(problems))
        return 1 if problems else 0
    failed = []
    for model in models:
        try:
            install(args.root, model, lock, args.retries)
        except (DownloadError, ChecksumError, OSError, RuntimeError, zipfile.BadZipFile) as err:
            log.error("%s: %s", model.name, err)
            for line in offline_lines(args.root, [model]):
                log.error("  to fetch by hand: %s", line)
            failed.append(model.name)
    log.info("summary: %d installed, %d failed%s", len(models) - len(failed), len(failed),
             f" ({', '.join(failed)})" if failed else "")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
