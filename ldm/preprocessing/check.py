"""Validate a DiffTalk dataset folder: counts, shapes, lists and landmark sanity (SPEC 1)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ldm.data.layout import (
    AUDIO_SMOOTHING,
    AUDIO_WINDOW,
    EYES,
    FEATURE_DIM,
    KEY_PATTERN,
    MIN_FRAMES_FOR_REFERENCE,
    MOUTH,
    N_LANDMARKS,
    REFERENCE_MARGIN,
    format_key,
    read_data_txt,
)
from ldm.preprocessing.dataset import CLIP_DIRS, CLIP_EXT

log = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """Problems found (errors make the dataset unusable, warnings deserve a look) and counts."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no error was found."""
        return not self.errors


def check_landmarks(pts: np.ndarray, size: int) -> str | None:
    """Why (68, 2) crop-space landmarks look wrong for a size x size image, or None."""
    if pts.shape != (N_LANDMARKS, 2):
        return f"shape {pts.shape}, expected ({N_LANDMARKS}, 2)"
    if not np.isfinite(pts).all():
        return "non-finite values"
    mouth = pts[MOUTH]
    if (mouth < 0).any() or (mouth > size - 1).any():
        return "mouth landmarks fall outside the image"
    if (pts < -0.25 * size).any() or (pts > 1.25 * size).any():
        return "landmarks far outside the image"
    if pts[EYES, 1].mean() >= mouth[:, 1].mean():
        return "eyes are not above the mouth"
    if np.ptp(pts[:, 0]) < 0.1 * size:
        return "face is implausibly small"
    return None


def _check_clip(root: Path, vid: int, n: int, full: bool, report: CheckReport, dims: Counter):
    """Check every file of one clip; returns the set of image sizes seen."""
    missing = {d: [] for d in CLIP_DIRS}
    sizes, bad = set(), []
    frames = range(1, n + 1) if full else sorted({1, n, *range(1, n + 1, max(1, n // 10))})
    for f in range(1, n + 1):
        for d in CLIP_DIRS:
            if not (root / d / f"{format_key(vid, f)}{CLIP_EXT[d]}").is_file():
                missing[d].append(f)
    for f in frames:
        key = format_key(vid, f)
        try:
            with Image.open(root / "images" / f"{key}.jpg") as im:
                sizes.add(im.size)
                side = im.size[0]
            why = check_landmarks(np.loadtxt(root / "landmarks" / f"{key}.lms", ndmin=2), side)
            if why:
                bad.append(f"{key}.lms: {why}")
            arr = np.load(root / "audio_smooth" / f"{key}.npy", mmap_mode=None if full else "r")
            if arr.ndim != 3 or arr.shape[:2] != (AUDIO_SMOOTHING, AUDIO_WINDOW):
                expected = f"({AUDIO_SMOOTHING}, {AUDIO_WINDOW}, D)"
                bad.append(f"{key}.npy: shape {arr.shape}, expected {expected}")
            else:
                dims[arr.shape[2]] += 1
                if full and not np.isfinite(arr).all():
                    bad.append(f"{key}.npy: non-finite values")
        except (OSError, ValueError) as exc:
            if not any(f in missing[d] for d in CLIP_DIRS):
                bad.append(f"{key}: unreadable ({exc})")
    for d, fs in missing.items():
        if fs:
            report.errors.append(f"id {vid}: {len(fs)} of {n} {d} files missing (first: {fs[:5]})")
    report.errors.extend(f"id {vid}: {b}" for b in bad[:10])
    if len(bad) > 10:
        report.errors.append(f"id {vid}: ... and {len(bad) - 10} more bad files")
    return sizes


def check_lists(lists: list[Path], counts: dict[int, int], report: CheckReport) -> None:
    """Keys must parse, point at existing frames, and train/test must not share an id."""
    ids_per_list = {}
    for path in lists:
        if not path.is_file():
            report.warnings.append(f"{path}: list not found")
            continue
        keys = path.read_text().split()
        ids, bad = set(), []
        for k in keys:
            m = KEY_PATTERN.match(k)
            if not m or int(m[1]) not in counts or not 1 <= int(m[2]) <= counts[int(m[1])]:
                bad.append(k)
            else:
                ids.add(int(m[1]))
        if bad:
            report.errors.append(f"{path}: {len(bad)} key(s) not in the dataset (first: {bad[:5]})")
        dup = len(keys) - len(set(keys))
        if dup:
            report.warnings.append(f"{path}: {dup} duplicate key(s)")
        if not keys:
            report.warnings.append(f"{path}: empty list")
        ids_per_list[path] = ids
        report.stats[f"{path.name} keys"] = len(keys)
    sets = list(ids_per_list.values())
    if len(sets) == 2 and sets[0] & sets[1]:
        report.errors.append(f"train and test lists share ids {sorted(sets[0] & sets[1])[:10]}")


def check_dataset(root: str | Path, lists: list[str | Path] = (), full: bool = True) -> CheckReport:
    """Validate the dataset under root (and the given key lists); `full=False` samples files."""
    root, report = Path(root), CheckReport()
    data_txt = root / "data.txt"
    if not data_txt.is_file():
        report.errors.append(f"{data_txt}: missing")
        return report
    parsed = read_data_txt(data_txt)
    report.errors += parsed.errors
    report.warnings += parsed.warnings
    counts = parsed.counts
    dims, sizes = Counter(), set()
    for vid, n in counts.items():
        if n <= 0:
            report.warnings.append(f"id {vid}: no frames (failed or unprocessed video)")
            continue
        if n < MIN_FRAMES_FOR_REFERENCE:
            report.warnings.append(
                f"id {vid}: {n} frames; the original loader's reference sampling (outside +/-"
                f"{REFERENCE_MARGIN} frames) fails for clips under {MIN_FRAMES_FOR_REFERENCE}"
            )
        sizes |= _check_clip(root, vid, n, full, report, dims)
    _check_uniform(sizes, dims, report)
    _check_orphans(root, counts, report)
    check_lists([Path(p) for p in lists], counts, report)
    report.stats.update(ids=sum(n > 0 for n in counts.values()), frames=sum(counts.values()))
    return report


def _check_uniform(sizes: set, dims: Counter, report: CheckReport) -> None:
    """All images square and equal-sized; one audio feature width."""
    if any(w != h for w, h in sizes):
        report.errors.append(f"non-square images {sorted(sizes)} (the loader needs square frames)")
    if len(sizes) > 1:
        report.warnings.append(f"several image sizes {sorted(sizes)} (all are resized to 256)")
    if len(dims) > 1:
        report.errors.append(f"audio_smooth files have different widths D: {dict(dims)}")
    if dims and FEATURE_DIM not in dims:
        report.warnings.append(
            f"audio feature width {list(dims)} (the original model uses {FEATURE_DIM})"
        )
    report.stats.update(image_sizes=sorted(sizes), audio_dims=sorted(dims))


def _check_orphans(root: Path, counts: dict[int, int], report: CheckReport) -> None:
    """Files beyond data.txt's counts, and leftovers of interrupted runs."""
    for d in CLIP_DIRS:
        folder = root / d
        orphans = [p.name for p in folder.glob(f"*{CLIP_EXT[d]}") if _orphan(p.stem, counts)]
        if orphans:
            report.warnings.append(
                f"{folder}: {len(orphans)} file(s) outside data.txt {orphans[:3]}"
            )
    tmp = root / ".tmp"
    if tmp.is_dir() and any(tmp.iterdir()):
        report.warnings.append(f"{tmp}: leftovers of an interrupted run (rerun preprocess)")


def _orphan(stem: str, counts: dict[int, int]) -> bool:
    """True if '{id}_{frame}' is not covered by data.txt."""
    m = KEY_PATTERN.match(stem)
    return not m or not 1 <= int(m[2]) <= counts.get(int(m[1]), 0)
