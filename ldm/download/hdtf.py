"""HDTF's annotation files (github.com/MRzzm/HDTF, HDTF_dataset/, CC BY 4.0) and their clips.

Formats, one space-separated line per video or clip (names with or without `.mp4`):
    {subset}_video_url.txt       Radio11 https://www.youtube.com/watch?v=...
    {subset}_resolution.txt      Radio11.mp4 720             (the height to download)
    {subset}_annotion_time.txt   Radio11.mp4 00:30-01:00 01:30-02:30   (clip k = k-th interval)
    {subset}_crop_wh.txt         Radio11_0.mp4 412 599 0 599 (min_width width min_height height)
    {subset}_crop_ratio.txt      Radio11_0.mp4 1.2           (landmark box enlargement)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SUBSETS = ("RD", "WDA", "WRA")
TIME_FILE = "{}_annotion_time.txt"  # HDTF's own spelling


class AnnotationError(ValueError):
    """An HDTF annotation file is missing or has a line that cannot be read."""


@dataclass(frozen=True)
class Crop:
    """HDTF's fixed crop window of a clip, in pixels of the listed resolution."""

    x: int
    width: int
    y: int
    height: int


@dataclass
class Video:
    """One HDTF source video and what its annotations say about it."""

    subset: str
    name: str  # e.g. Radio11 (no .mp4)
    url: str
    height: int | None  # listed resolution (pixels); None when the resolution file has no line
    intervals: list[tuple[float, float]]  # (start, end) seconds of clip k
    crops: dict[int, Crop] = field(default_factory=dict)
    ratios: dict[int, float] = field(default_factory=dict)

    def clip_name(self, k: int) -> str:
        """File name of clip k: HDTF's `{name}_{k}.mp4`."""
        return f"{self.name}_{k}.mp4"


def clip_key(name: str) -> str:
    """One spelling for a clip: HDTF's `Radio34_0.mp4`, the community's `RD_Radio34_000.mp4`
    (the original's train_name.txt) and paths of either all give `Radio34_0`."""
    stem = Path(name).name.removesuffix(".mp4")
    prefix = next((f"{s}_" for s in SUBSETS if stem.startswith(f"{s}_")), "")
    stem = stem[len(prefix) :]
    base, _, k = stem.rpartition("_")
    return f"{base}_{int(k)}" if base and k.isdigit() else stem


def parse_time(text: str) -> float:
    """Seconds from 'mm:ss', 'h:mm:ss' or plain seconds (fractions allowed)."""
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or not all(re.fullmatch(r"\d+(\.\d+)?", p) for p in parts):
        raise ValueError(f"not a time: {text!r}")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return seconds


def read_table(path: Path, min_fields: int = 1) -> dict[str, tuple[list[str], int]]:
    """'name field ...' lines -> {name without .mp4: (fields, line number)}."""
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    table = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 1 + min_fields:
            raise AnnotationError(
                f"{path}:{no}: expected a name and {min_fields}+ fields: {line!r}"
            )
        name = parts[0].removesuffix(".mp4")
        if name in table:
            log.warning("%s:%d: %s listed again; the later line wins", path, no, name)
        table[name] = (parts[1:], no)
    return table


def _parse(path: Path, no: int, what: str, convert, values: list[str]):
    """convert(values) or an AnnotationError naming the file and line."""
    try:
        return convert(values)
    except (ValueError, IndexError) as err:
        raise AnnotationError(f"{path}:{no}: bad {what} {' '.join(values)!r} ({err})") from err


def _intervals(values: list[str]) -> list[tuple[float, float]]:
    """'mm:ss-mm:ss' fields -> (start, end) seconds, each with end > start."""
    out = []
    for v in values:
        start, end = (parse_time(t) for t in v.split("-"))
        if end <= start:
            raise ValueError(f"{v} ends before it starts")
        out.append((start, end))
    return out


def _per_clip(folder: Path, subset: str, suffix: str, fields: int, convert) -> dict:
    """{(video name, k): value} from a per-clip file ({name}_{k} keys); {} when it is absent."""
    path = folder / f"{subset}_{suffix}.txt"
    if not path.is_file():
        log.warning("%s absent: its clips have no %s", path, suffix)
        return {}
    out = {}
    for key, (values, no) in read_table(path, fields).items():
        name, _, k = key.rpartition("_")
        if not k.isdigit():
            raise AnnotationError(f"{path}:{no}: {key} is not '{{video}}_{{clip index}}'")
        out[name, int(k)] = _parse(path, no, suffix, convert, values[:fields])
    return out


def load_subset(folder: Path, subset: str) -> list[Video]:
    """The videos of one subset (RD, WDA or WRA) that have a URL and annotated times."""
    urls = read_table(folder / f"{subset}_video_url.txt")
    times_path = folder / TIME_FILE.format(subset)
    times = read_table(times_path)
    res_path = folder / f"{subset}_resolution.txt"
    heights = read_table(res_path) if res_path.is_file() else {}
    crops = _per_clip(folder, subset, "crop_wh", 4, lambda v: Crop(*map(int, v)))
    ratios = _per_clip(folder, subset, "crop_ratio", 1, lambda v: float(v[0]))
    videos = []
    for name, (fields, _) in urls.items():
        if name not in times:
            log.warning("%s/%s: no annotated times in %s; skipped", subset, name, times_path.name)
            continue
        spans, no = times[name]
        h = heights.get(name)
        videos.append(
            Video(
                subset, name, fields[0],
                _parse(res_path, h[1], "resolution", lambda v: int(v[0]), h[0]) if h else None,
                _parse(times_path, no, "time stamps", _intervals, spans),
                {k: c for (n, k), c in crops.items() if n == name},
                {k: r for (n, k), r in ratios.items() if n == name},
            )
        )  # fmt: skip
    return videos


def present_subsets(folder: Path) -> tuple[str, ...]:
    """The subsets whose video_url file is in `folder` (all of them when none is: the first
    missing file is then what the error names)."""
    return tuple(s for s in SUBSETS if (folder / f"{s}_video_url.txt").is_file()) or SUBSETS


def load_annotations(folder: Path, subsets: tuple[str, ...] | None = None) -> list[Video]:
    """Videos of the given subsets (default: those present); clip names must be unique."""
    subsets = present_subsets(folder) if subsets is None else subsets
    videos = [v for s in subsets for v in load_subset(folder, s)]
    seen: dict[str, str] = {}
    for v in videos:
        if v.name in seen:
            raise AnnotationError(
                f"{folder}: video {v.name} is in both {seen[v.name]} and {v.subset}; its clips "
                "would overwrite each other (download the subsets into separate --out folders)"
            )
        seen[v.name] = v.subset
    return videos
