"""On-disk dataset bookkeeping: per-clip metadata, the id<->video registry, data.txt and lists.

Layout under the output root (SPEC 1): images/, landmarks/, audio_smooth/ with `{id}_{frame}`
names (frames from 1), data.txt, plus audio/{id}.wav, features/{id}.npy (50 Hz features),
crops/{id}.json (crop boxes in source pixels; written last, marks the clip complete) and
videos.tsv (id, source, frames, source fps, crop, note).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ldm.data.layout import FPS, format_data_txt, format_key

log = logging.getLogger(__name__)

CLIP_DIRS = ("images", "landmarks", "audio_smooth")
CLIP_EXT = {"images": ".jpg", "landmarks": ".lms", "audio_smooth": ".npy"}
REGISTRY = "videos.tsv"
REGISTRY_COLUMNS = ("id", "source", "frames", "source_fps", "crop", "note")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file via a temporary name and rename (readers never see half a file)."""
    p = Path(path)
    if p.is_file() and p.read_text() == text:
        return  # unchanged: keep the file (and its mtime) as is
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


@dataclass
class ClipMeta:
    """Everything needed to map a processed clip back to its source video."""

    id: int
    source: str
    source_size: tuple[int, int]  # (width, height) as displayed
    source_fps: float
    n_frames: int  # frames 1..n_frames exist at `fps`
    size: int  # side of the saved square frames
    box: list[int] | None  # (x0, y0, side) in source pixels when constant over the clip
    boxes: list[list[int]] | None = None  # per-frame (x0, y0, side) for crop mode 'track'
    fps: float = FPS
    crop_mode: str = "fixed"
    invalid_frames: list[list[int]] = field(default_factory=list)  # [first, last], 1-based
    landmarker: str = "dlib"
    audio_features: str | None = "logmel"
    feature_dim: int | None = None
    notes: list[str] = field(default_factory=list)

    def box_for(self, frame: int) -> list[int]:
        """(x0, y0, side) source-pixel crop box of 1-based `frame`."""
        return self.boxes[frame - 1] if self.boxes is not None else self.box

    def valid_frames(self) -> list[int]:
        """1-based frames that belong in the train/test lists (not inside a long no-face gap)."""
        bad = {f for a, b in self.invalid_frames for f in range(a, b + 1)}
        return [f for f in range(1, self.n_frames + 1) if f not in bad]

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomic)."""
        atomic_write_text(path, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ClipMeta:
        """Read a crops/{id}.json file."""
        data = json.loads(Path(path).read_text())
        data["source_size"] = tuple(data["source_size"])
        return cls(**data)


def meta_path(root: str | Path, vid: int) -> Path:
    """crops/{id}.json under the dataset root."""
    return Path(root) / "crops" / f"{vid}.json"


def load_meta(root: str | Path, vid: int) -> ClipMeta | None:
    """The completed clip's metadata, or None if the clip is not complete."""
    p = meta_path(root, vid)
    return ClipMeta.load(p) if p.is_file() else None


# --------------------------------------------------------------------------- registry


@dataclass
class Entry:
    """One row of videos.tsv: a finished clip and where it came from."""

    id: int
    source: str
    frames: int = 0
    source_fps: float = 0.0
    crop: str = ""  # "x0 y0 side" in source pixels, or the crop mode if it varies
    note: str = ""


def read_registry(root: str | Path) -> dict[int, Entry]:
    """id -> Entry from videos.tsv (empty if absent)."""
    p = Path(root) / REGISTRY
    if not p.is_file():
        return {}
    with p.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {
        int(r["id"]): Entry(
            int(r["id"]),
            r["source"],
            int(r["frames"] or 0),
            float(r["source_fps"] or 0),
            r["crop"],
            r["note"],
        )
        for r in rows
    }


def write_registry(root: str | Path, entries: dict[int, Entry]) -> None:
    """Write videos.tsv sorted by id (atomic)."""
    lines = ["\t".join(REGISTRY_COLUMNS)]
    for e in sorted(entries.values(), key=lambda e: e.id):
        note = e.note.replace("\t", " ").replace("\n", " ")
        lines.append(f"{e.id}\t{e.source}\t{e.frames}\t{e.source_fps:g}\t{e.crop}\t{note}")
    atomic_write_text(Path(root) / REGISTRY, "\n".join(lines) + "\n")


class IdAllocator:
    """Ids for sources: explicit ones first, then those in the registry, then the smallest free
    id from max(start_id, highest registered id + 1) up."""

    def __init__(self, registry: dict[int, Entry], start_id: int = 1, fixed: dict | None = None):
        self.fixed = dict(fixed or {})
        self.registered = {e.source: e.id for e in registry.values()}
        self.used = set(registry) | set(self.fixed.values())
        self.next = max(start_id, max(registry, default=0) + 1)

    def known(self, source: str) -> int | None:
        """The id this source already has (explicit or registered), else None."""
        return self.fixed.get(source, self.registered.get(source))

    def id_for(self, source: str) -> int:
        """The source's known id, or a new one (reserved from now on)."""
        vid = self.known(source)
        if vid is None:
            while self.next in self.used:
                self.next += 1
            vid = self.next
            self.registered[source] = vid
        self.used.add(vid)
        return vid


# --------------------------------------------------------------------------- lists


def parse_id_spec(spec: str | None) -> set[int]:
    """'100-176,180' -> {100, ..., 176, 180}."""
    ids: set[int] = set()
    for part in (spec or "").replace(" ", "").split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        ids.update(range(int(a), int(b or a) + 1))
    return ids


def choose_test_ids(
    metas: dict[int, ClipMeta],
    test_ids: set[int] | None = None,
    test_videos: list[str] | None = None,
    test_fraction: float = 0.1,
) -> set[int]:
    """Ids of the test split (split by video): explicit ids or video names if given, else the
    highest ceil(fraction * n) ids (as the original: train ids 1-99, test 100-176)."""
    if test_ids or test_videos:
        names = {Path(n).name for n in test_videos or []}  # a path, a file name or a stem
        by_name = {
            i for i, m in metas.items() if {Path(m.source).name, Path(m.source).stem} & names
        }
        unknown = names - {
            n for m in metas.values() for n in (Path(m.source).name, Path(m.source).stem)
        }
        if unknown:
            log.warning("--test-videos not found among processed clips: %s", sorted(unknown))
        return (set(test_ids or ()) & set(metas)) | by_name
    n = len(metas)
    k = min(n - 1, math.ceil(test_fraction * n)) if n > 1 and test_fraction > 0 else 0
    return set(sorted(metas)[n - k :]) if k else set()


def write_lists(
    root: str | Path,
    train_list: str | Path,
    test_list: str | Path,
    test_ids: set[int] | None = None,
    test_videos: list[str] | None = None,
    test_fraction: float = 0.1,
) -> tuple[int, int]:
    """Rewrite data.txt and the train/test key lists from every complete clip under root.
    Returns (n_train_keys, n_test_keys)."""
    root = Path(root)
    metas = {}
    for p in sorted((root / "crops").glob("*.json")):
        m = ClipMeta.load(p)
        metas[m.id] = m
    max_id = max(metas, default=0)
    missing = [vid for vid in range(1, max_id + 1) if vid not in metas]
    if missing:
        log.warning("ids without frames (failed or not yet processed): %s", _ranges(set(missing)))
    counts = {vid: m.n_frames for vid, m in metas.items()}
    atomic_write_text(root / "data.txt", format_data_txt(counts))
    test = choose_test_ids(metas, test_ids, test_videos, test_fraction)
    keys = {vid: [format_key(vid, f) for f in m.valid_frames()] for vid, m in sorted(metas.items())}
    train_keys = [k for vid, ks in keys.items() if vid not in test for k in ks]
    test_keys = [k for vid, ks in keys.items() if vid in test for k in ks]
    atomic_write_text(train_list, "".join(f"{k}\n" for k in train_keys))
    atomic_write_text(test_list, "".join(f"{k}\n" for k in test_keys))
    if metas and not test_keys:
        log.warning("the test list %s is empty (need 2+ videos or --test-ids)", test_list)
    log.info(
        "wrote %s (%d ids), %s (%d keys, ids %s), %s (%d keys, ids %s)",
        root / "data.txt",
        max_id,
        train_list,
        len(train_keys),
        _ranges(set(metas) - test),
        test_list,
        len(test_keys),
        _ranges(test),
    )
    return len(train_keys), len(test_keys)


def _ranges(ids: set[int]) -> str:
    """{1,2,3,7} -> '1-3,7'."""
    out, run = [], []
    for i in sorted(ids):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"
