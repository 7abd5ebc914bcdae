"""Download HDTF from its annotation files and cut it into HDTF's clips, with a manifest.

Example:
    git clone https://github.com/MRzzm/HDTF
    python scripts/download_hdtf.py --annotations HDTF/HDTF_dataset --out raw/hdtf --jobs 4

Each video is downloaded with yt-dlp at the height in {subset}_resolution.txt, cut at the times in
{subset}_annotion_time.txt into {out}/{name}_{k}.mp4 (progressive H.264 + AAC, source frame rate),
and listed in {out}/manifest.csv (clip, url, start, end, frames, sha256, height). Reruns skip
finished clips; files are renamed into place only when complete. Videos that are gone (removed,
private, geo-blocked) are listed in the summary and skipped. Exit code 1 if a clip could not be
cut, 2 on bad annotations; unavailable videos alone do not fail the run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from ldm.download import setup_logging
from ldm.download.hdtf import SUBSETS, AnnotationError, Video, load_annotations, present_subsets
from ldm.download.hdtf_clips import MANIFEST_FIELDS, VideoUnavailable, clip_row, process_video
from ldm.video import VideoError

log = logging.getLogger("download_hdtf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--annotations", type=Path, required=True, help="HDTF's HDTF_dataset folder")
    p.add_argument("--out", type=Path, default=Path("raw/hdtf"), help="clip folder")
    p.add_argument(
        "--subset", help="comma-separated, from RD,WDA,WRA (default: those in --annotations)"
    )
    p.add_argument("--jobs", type=int, default=2, help="videos downloaded and cut in parallel")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these videos (e.g. Radio11)")
    p.add_argument("--keep-raw", action="store_true", help="keep full videos in {out}/_raw")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.subset is None:
        args.subsets = present_subsets(args.annotations)
    else:
        args.subsets = tuple(s.strip() for s in args.subset.split(",") if s.strip())
    bad = [s for s in args.subsets if s not in SUBSETS]
    if bad:
        p.error(f"unknown subset(s) {', '.join(bad)}; choose from {', '.join(SUBSETS)}")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """clip -> row of an existing manifest (empty when there is none)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {row["clip"]: row for row in csv.DictReader(fh)}


def write_manifest(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write the manifest sorted by clip name (temp + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))
    os.replace(tmp, path)


def finished_clips(videos: list[Video], out: Path, rows: dict[str, dict[str, str]]) -> set[str]:
    """Names of clips present under their final name; rows are added for any the manifest lacks
    (a run stopped between renaming a clip and writing the manifest). Rows of deleted clips go."""
    for clip in [c for c in rows if not (out / c).is_file()]:
        del rows[clip]
    for v in videos:
        for k in range(len(v.intervals)):
            name = v.clip_name(k)
            if name not in rows and (out / name).is_file():
                rows[name] = clip_row(v, k, out / name).as_dict()
    return set(rows)


def run(videos: list[Video], args: argparse.Namespace) -> dict[str, list]:
    """Process the videos in parallel; {"rows", "gone", "failed"} of this run."""
    manifest = args.out / "manifest.csv"
    rows = read_manifest(manifest)
    done = finished_clips(videos, args.out, rows)
    result: dict[str, list] = {"rows": [], "gone": [], "failed": [], "skipped": []}
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(process_video, v, args.out, done, args.keep_raw): v for v in videos}
        bar = tqdm(as_completed(futures), total=len(futures), unit="video", desc="HDTF",
                   disable=not sys.stderr.isatty())  # fmt: skip
        for fut in bar:
            video = futures[fut]
            try:
                new = fut.result()
            except VideoUnavailable as err:
                log.warning("unavailable: %s", err)
                result["gone"].append(str(err))
                continue
            except Exception as err:  # one video's failure must not end the run
                log.debug("failure of %s", video.name, exc_info=True)
                reason = str(err) if isinstance(err, VideoError | OSError) else repr(err)
                log.error("failed: %s/%s: %s", video.subset, video.name, reason)
                result["failed"].append(f"{video.subset}/{video.name}: {reason}")
                continue
            if not new:
                result["skipped"].append(video.name)
            for row in new:
                rows[row.clip] = row.as_dict()
            result["rows"] += new
            write_manifest(manifest, rows)
    write_manifest(manifest, rows)
    raw_dir = args.out / "_raw"
    if raw_dir.is_dir() and not any(raw_dir.iterdir()):
        raw_dir.rmdir()
    return result


def report(result: dict[str, list], out: Path) -> None:
    """Log the end-of-run summary."""
    log.info(
        "summary: %d clips cut now, %d videos already done, %d videos unavailable, %d failed; "
        "manifest %s",
        len(result["rows"]), len(result["skipped"]), len(result["gone"]), len(result["failed"]),
        out / "manifest.csv",
    )  # fmt: skip
    for line in result["gone"]:
        log.info("  unavailable: %s", line)
    for line in result["failed"]:
        log.error("  FAILED: %s", line)


def main(argv: list[str] | None = None) -> int:
    """Download and cut; 0 unless a clip failed (1) or the annotations are unreadable (2)."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        videos = load_annotations(args.annotations, args.subsets)
    except AnnotationError as err:
        log.error("%s", err)
        return 2
    if args.only:
        videos = [v for v in videos if v.name in set(args.only)]
    n_clips = sum(len(v.intervals) for v in videos)
    log.info("%d videos, %d clips in %s", len(videos), n_clips, ", ".join(args.subsets))
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(videos, args)
    report(result, args.out)
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
