"""Process many videos (optionally in parallel), skip finished ones, keep the registry current."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ldm.preprocessing.dataset import (
    Entry,
    IdAllocator,
    load_meta,
    read_registry,
    write_registry,
)
from ldm.preprocessing.pipeline import (
    ClipResult,
    PreprocessOptions,
    build_clip,
    commit_clip,
    preflight,
)

log = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".ts"}
EXPECTED_ERRORS = (ValueError, RuntimeError, OSError)  # VideoError, ClipError, Landmarker/Feature


@dataclass
class RunSummary:
    """What happened to each input of one run."""

    done: list[ClipResult] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, message)

    @property
    def ok(self) -> bool:
        """True when no video failed."""
        return not self.failed


def expand_inputs(paths: list[str | Path]) -> list[str]:
    """Resolved input files in argument order; a directory adds its video files, sorted."""
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_EXTS)
            if not found:
                log.warning("%s: directory holds no video files", p)
            out += [str(q.resolve()) for q in found]
        else:
            out.append(str(p.resolve()))
    return list(dict.fromkeys(out))


def _is_complete(root: Path, vid: int, opts: PreprocessOptions) -> bool:
    """True when clip `vid` is complete; warns if it was made with other output options."""
    meta = load_meta(root, vid)
    if meta is None:
        return False
    old = {
        "size": meta.size,
        "landmarker": meta.landmarker,
        "audio_features": meta.audio_features,
        "crop_mode": meta.crop_mode,
    }
    if old != opts.signature():
        log.warning(
            "%s: id %d was made with %s, now asked for %s; kept (use --overwrite)",
            meta.source,
            vid,
            old,
            opts.signature(),
        )
    return True


def _worker_init(threads: int) -> None:
    """Limit each worker's threads so N workers share the cores; log like the parent."""
    import cv2

    cv2.setNumThreads(threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _safe_build(src: str, work: str, opts: PreprocessOptions):
    """build_clip returning (result, None) or (None, message) instead of raising."""
    try:
        return build_clip(src, work, opts), None
    except EXPECTED_ERRORS as exc:
        return None, str(exc) if str(src) in str(exc) else f"{src}: {exc}"
    except Exception as exc:  # noqa: BLE001 - report and go on with the other videos
        log.debug("%s", traceback.format_exc())
        return None, f"{src}: unexpected {type(exc).__name__}: {exc}"


@contextmanager
def _locked(root: Path):
    """Hold an exclusive lock on root/.lock so two runs never write the same dataset."""
    import fcntl

    with open(root / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise RuntimeError(f"{root}: another preprocess run is writing this dataset") from exc
        yield


def run(
    inputs: list[str | Path],
    root: str | Path,
    opts: PreprocessOptions,
    workers: int = 1,
    start_id: int = 1,
    fixed_ids: dict[str, int] | None = None,
    overwrite: bool = False,
) -> RunSummary:
    """Preprocess every input into `root`; failures are collected, never fatal to the others.

    Finished videos keep their ids and are skipped; new ones get the next free ids in argument
    order as they complete (a video that fails gets no id).
    """
    root = Path(root)
    preflight(opts)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        shutil.rmtree(root / ".tmp", ignore_errors=True)  # leftovers of a killed run
        registry = read_registry(root)
        ids = IdAllocator(registry, start_id, fixed_ids)
        summary, todo = RunSummary(), []
        for src in expand_inputs(inputs):
            vid = ids.known(src)
            if vid is not None and not overwrite and _is_complete(root, vid, opts):
                summary.skipped.append((src, vid))
            else:
                todo.append(src)
        if summary.skipped:
            log.info("skipping %d finished video(s)", len(summary.skipped))
        _run_all(todo, root, opts, workers, _Committer(root, registry, ids, summary))
        shutil.rmtree(root / ".tmp", ignore_errors=True)
    return summary


class _Committer:
    """Commits built clips in argument order (stable ids whatever the completion order)."""

    def __init__(self, root: Path, registry: dict, ids: IdAllocator, summary: RunSummary):
        self.root, self.registry, self.ids, self.summary = root, registry, ids, summary
        self.pending: dict[int, tuple] = {}
        self.next = 0

    def add(self, index: int, src: str, work: Path, result, error) -> None:
        """Record one outcome; commit every consecutive finished one."""
        self.pending[index] = (src, work, result, error)
        while self.next in self.pending:
            self._commit(*self.pending.pop(self.next))
            self.next += 1

    def _commit(self, src: str, work: Path, result, error) -> None:
        """Move a built clip in under the next id (or report its failure); update videos.tsv."""
        if result is None:
            log.error("FAILED %s", error)
            self.summary.failed.append((src, error))
            return
        vid = self.ids.id_for(src)
        commit_clip(work, self.root, vid, result)
        m = result.meta
        crop = " ".join(map(str, m.box)) if m.box is not None else m.crop_mode
        note = "; ".join(w.replace(f"{src}: ", "") for w in result.warnings)
        self.registry[vid] = Entry(vid, src, m.n_frames, m.source_fps, crop, note)
        write_registry(self.root, self.registry)
        self.summary.done.append(result)


def _work_dir(root: Path, src: str) -> Path:
    """Private build folder of one source under root/.tmp."""
    return root / ".tmp" / f"src-{hashlib.sha1(src.encode()).hexdigest()[:12]}"


def _run_all(todo: list[str], root: Path, opts, workers: int, committer: _Committer) -> None:
    """Build `todo` serially or with a process pool (tqdm bar), committing in order."""
    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not todo)
    with logging_redirect_tqdm():
        if workers <= 1:
            for i, src in enumerate(todo):
                work = _work_dir(root, src)
                committer.add(i, src, work, *_safe_build(src, str(work), opts))
                bar.update()
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            wopts = PreprocessOptions(**{**opts.__dict__, "progress": False})
            ctx = get_context("spawn")
            with ProcessPoolExecutor(workers, ctx, _worker_init, (threads,)) as pool:
                futs = {
                    pool.submit(_safe_build, src, str(_work_dir(root, src)), wopts): (i, src)
                    for i, src in enumerate(todo)
                }
                for fut in as_completed(futs):
                    i, src = futs[fut]
                    committer.add(i, src, _work_dir(root, src), *fut.result())
                    bar.update()
    bar.close()
