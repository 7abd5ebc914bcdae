"""Preprocess one video into the DiffTalk layout: 25 fps frames, face crop, landmarks, audio.

A clip is built in a private work folder under `{root}/.tmp/` and only moved into place
(renamed to `{id}_{frame}`) when complete; `crops/{id}.json` is written last and marks it done.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ldm.data.layout import FPS, MIN_FRAMES_FOR_REFERENCE, REFERENCE_MARGIN, format_key
from ldm.preprocessing import audio_features as af
from ldm.preprocessing.crop import crop_frame, fill_gaps, plan_crop, to_crop_coords, window_box
from ldm.preprocessing.dataset import CLIP_DIRS, CLIP_EXT, ClipMeta, meta_path
from ldm.preprocessing.landmarks import Landmarker, make_landmarker
from ldm.video import VideoError, VideoInfo, extract_audio, iter_frames, probe

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
WORK_DIRS = (*CLIP_DIRS, "audio", "features")


class ClipError(ValueError):
    """A video cannot be turned into a clip (no face, too many faceless frames, ...)."""


@dataclass
class PreprocessOptions:
    """Per-video processing options (see scripts/preprocess.py for the CLI)."""

    size: int = 256  # side of the saved square frames
    landmarker: str = "dlib"  # dlib | fan
    landmarker_kw: dict = field(default_factory=dict)
    audio_features: str | None = "logmel"  # None: no audio needed (e.g. a portrait to animate)
    audio_model: str | None = None  # local model folder (wav2vec2/hubert/whisper)
    features_dir: str | None = None  # deepspeech: folder of {video_stem}.npy arrays
    crop_mode: str = "fixed"  # fixed | track | hdtf (crop_windows) | hdtf-ratio (crop_ratios)
    crop_scale: float = 1.8
    # HDTF's crops by video stem: (x, y, w, h, height the window was drawn at or None) and ratios
    crop_windows: dict[str, tuple] = field(default_factory=dict)
    crop_ratios: dict[str, float] = field(default_factory=dict)
    max_gap: int = 12  # frames without a face filled by interpolation (0.48 s)
    max_missing: float = 0.25  # fail the clip above this fraction of faceless frames
    max_frames: int | None = None  # keep at most this many frames (original lists: 1499)
    progress: bool = True  # per-frame tqdm bars

    def signature(self) -> dict:
        """The options that change the output files (a rerun with others is not a no-op)."""
        return {
            "size": self.size,
            "landmarker": self.landmarker,
            "audio_features": self.audio_features,
            "crop_mode": self.crop_mode,
        }


@dataclass
class ClipResult:
    """Outcome of processing one video."""

    id: int
    source: str
    n_frames: int
    meta: ClipMeta
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


def remove_clip_files(root: Path, vid: int, keep_work: Path | None = None) -> int:
    """Delete every output file of clip `vid` and stale work folders named after it."""
    n = 0
    for sub in (*CLIP_DIRS, "audio", "features", "crops"):
        d = root / sub
        pattern = f"{vid}_*{CLIP_EXT[sub]}" if sub in CLIP_EXT else f"{vid}.*"
        for p in d.glob(pattern) if d.is_dir() else ():
            p.unlink()
            n += 1
    for stale in (root / ".tmp").glob(f"{vid}.*"):
        if keep_work is None or stale.resolve() != keep_work.resolve():
            shutil.rmtree(stale, ignore_errors=True)
    return n


def check_input(path: str | Path, opts: PreprocessOptions) -> VideoInfo:
    """Probe and reject inputs that cannot make a clip, with the cause."""
    info = probe(path)
    if not info.has_video:
        raise VideoError(f"{path}: no video stream")
    if info.duration <= 0 and info.n_frames == 0:
        raise VideoError(f"{path}: zero duration")
    if opts.audio_features is not None and not info.has_audio:
        raise VideoError(f"{path}: no audio track (audio features need the speech)")
    return info


@lru_cache(maxsize=2)
def _landmarker(name: str, kw: tuple) -> Landmarker:
    """One landmarker per process and configuration (dlib's predictor takes ~0.5 s to load)."""
    return make_landmarker(name, **dict(kw))


def cached_landmarker(name: str = "dlib", **kw) -> Landmarker:
    """make_landmarker, cached per process."""
    return _landmarker(name, tuple(sorted(kw.items())))


def preflight(opts: PreprocessOptions) -> None:
    """Fail fast, once, when the landmarker or the audio feature extractor is unavailable."""
    cached_landmarker(opts.landmarker, **opts.landmarker_kw)
    if opts.audio_features not in (None, "logmel"):
        from ldm.preprocessing.audio_encoders import check_available

        check_available(opts.audio_features, opts.audio_model, opts.features_dir)


def track_landmarks(
    path: Path, info: VideoInfo, opts: PreprocessOptions
) -> tuple[np.ndarray, list[str]]:
    """Pass 1: (T, 68, 2) source-pixel landmarks at 25 fps (NaN where no face) and warnings."""
    tracker = cached_landmarker(opts.landmarker, **opts.landmarker_kw).tracker()
    total = opts.max_frames or int(round(info.duration * FPS)) or None
    frames = iter_frames(path, fps=FPS, max_frames=opts.max_frames, info=info)
    bar = tqdm(
        frames,
        total=total,
        desc=f"landmarks {path.name}",
        unit="fr",
        leave=False,
        disable=not opts.progress,
    )
    lms = [tracker.update(f) for f in bar]
    if not lms:
        raise VideoError(f"{path}: no frames could be decoded")
    st, warnings = tracker.stats, []
    if st.n_multi:
        warnings.append(
            f"{path}: more than one face in {st.n_multi} frame(s) (first at frame "
            f"{st.first_multi + 1}); kept the largest face of the first detection and followed it"
        )
    return np.stack(lms), warnings


def _plan(path: Path, lms: np.ndarray, info: VideoInfo, opts: PreprocessOptions):
    """Fill landmark gaps and plan crop boxes; raise ClipError when the face is mostly absent."""
    missing = np.isnan(lms).any(axis=(1, 2))
    if missing.all():
        raise ClipError(f"{path}: no face detected in any of {len(lms)} frames")
    if missing.mean() > opts.max_missing:
        raise ClipError(
            f"{path}: no face in {missing.sum()} of {len(lms)} frames "
            f"({missing.mean():.0%} > --max-missing {opts.max_missing:.0%})"
        )
    filled, invalid, long_gaps = fill_gaps(lms, opts.max_gap)
    warnings = [
        f"{path}: no face in frames {g.start + 1}-{g.end} ({g.length} frames > --max-gap "
        f"{opts.max_gap}); kept but left out of the lists"
        for g in long_gaps
    ]
    if len(lms) < MIN_FRAMES_FOR_REFERENCE:
        warnings.append(
            f"{path}: only {len(lms)} frames; the original training loader needs "
            f"{MIN_FRAMES_FOR_REFERENCE}+ to draw a reference frame outside "
            f"+/-{REFERENCE_MARGIN} frames"
        )
    short = int(missing.sum()) - sum(g.length for g in long_gaps)
    if short:
        log.info("%s: interpolated landmarks in %d faceless frame(s)", path, short)
    if opts.crop_mode.startswith("hdtf"):
        boxes = _hdtf_boxes(path, filled, info, opts)
    else:
        boxes = plan_crop(filled, info.width, info.height, opts.crop_mode, opts.crop_scale)
    return filled, boxes, long_gaps, warnings


def _hdtf_boxes(path: Path, lms: np.ndarray, info: VideoInfo, opts: PreprocessOptions):
    """HDTF's own crop of a clip: its crop_wh window ('hdtf'), or the fixed landmark crop with
    its side scaled by the clip's crop_ratio ('hdtf-ratio'); ClipError if the clip has none."""
    from ldm.download.hdtf import clip_key

    stem = clip_key(Path(path).name)
    if opts.crop_mode == "hdtf":
        if stem not in opts.crop_windows:
            raise ClipError(f"{path}: no crop window for {stem} in HDTF's crop_wh (--crop hdtf)")
        *window, drawn_at = opts.crop_windows[stem]
        scale = info.height / drawn_at if drawn_at else 1.0
        return window_box(tuple(window), info.width, info.height, len(lms), scale)
    if stem not in opts.crop_ratios:
        raise ClipError(f"{path}: no ratio for {stem} in HDTF's crop_ratio (--crop hdtf-ratio)")
    scale = opts.crop_scale * opts.crop_ratios[stem]
    return plan_crop(lms, info.width, info.height, "fixed", scale)


def _write_frames(
    path: Path,
    work: Path,
    info: VideoInfo,
    lms: np.ndarray,
    boxes: np.ndarray,
    opts: PreprocessOptions,
) -> None:
    """Pass 2: decode again, crop, save work/images/{frame}.jpg and landmarks/{frame}.lms."""
    n, params = 0, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    frames = iter_frames(path, fps=FPS, max_frames=len(lms), info=info)
    for t, frame in enumerate(
        tqdm(
            frames,
            total=len(lms),
            desc=f"frames {path.name}",
            unit="fr",
            leave=False,
            disable=not opts.progress,
        )
    ):
        if t >= len(lms):
            break
        img = crop_frame(frame, boxes[t], opts.size)
        if not cv2.imwrite(str(work / "images" / f"{t + 1}.jpg"), img[..., ::-1], params):
            raise OSError(f"cannot write {work / 'images'}")
        pts = to_crop_coords(lms[t], boxes[t], opts.size)
        np.savetxt(work / "landmarks" / f"{t + 1}.lms", pts, fmt="%f")
        n += 1
    if n != len(lms):
        raise VideoError(f"{path}: second decode gave {n} frames, first gave {len(lms)}")


def _write_audio(path: Path, work: Path, n_frames: int, opts: PreprocessOptions) -> int:
    """Extract the 16 kHz mono wav, compute 50 Hz features and the (8, 16, D) per-frame files."""
    import soundfile as sf

    wav_path = extract_audio(path, work / "audio" / "audio.wav", sr=af.SAMPLE_RATE)
    wav, sr = sf.read(wav_path, dtype="float32")
    if wav.size == 0:
        raise VideoError(f"{path}: the audio track is empty")
    if abs(len(wav) / sr - n_frames / FPS) > 0.2:
        log.warning(
            "%s: audio lasts %.2f s, video %.2f s; windows are zero-padded or cut",
            path,
            len(wav) / sr,
            n_frames / FPS,
        )
    model = opts.audio_model
    if opts.audio_features == "deepspeech" and opts.features_dir is not None:
        model = str(Path(opts.features_dir) / f"{path.stem}.npy")
    feats = af.extract_features(wav, sr, kind=opts.audio_features, model_path=model)
    np.save(work / "features" / "features.npy", feats)
    for first, block in af.iter_smoothed(feats, n_frames):  # (b, 8, 16, D) at a time
        for i, cond in enumerate(block):
            np.save(work / "audio_smooth" / f"{first + i + 1}.npy", cond)
    return feats.shape[1]


def build_clip(path: str | Path, work: str | Path, opts: PreprocessOptions) -> ClipResult:
    """Process one video into a private work folder (files named by frame); id not yet set."""
    path, work = Path(path), Path(work)
    timings, t0 = {}, time.perf_counter()
    info = check_input(path, opts)
    shutil.rmtree(work, ignore_errors=True)
    for sub in WORK_DIRS:
        (work / sub).mkdir(parents=True, exist_ok=True)
    lms, warnings = track_landmarks(path, info, opts)
    timings["decode+landmarks"] = time.perf_counter() - t0
    filled, boxes, long_gaps, gap_warnings = _plan(path, lms, info, opts)
    t1 = time.perf_counter()
    _write_frames(path, work, info, filled, boxes, opts)
    timings["decode+crop+write"] = time.perf_counter() - t1
    t2, dim = time.perf_counter(), None
    if opts.audio_features is not None:
        dim = _write_audio(path, work, len(filled), opts)
    timings["audio"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    notes = warnings + gap_warnings
    for w in notes:
        log.warning(w)
    meta = _make_meta(path, info, boxes, long_gaps, opts, dim, notes)
    return ClipResult(0, str(path), len(filled), meta, notes, timings)


def commit_clip(work: str | Path, root: str | Path, vid: int, result: ClipResult) -> ClipResult:
    """Move a built clip into the dataset as id `vid` ({vid}_{frame} names), replacing any old
    files of that id; crops/{vid}.json is written last and marks the clip complete."""
    work, root = Path(work), Path(root)
    remove_clip_files(root, vid, keep_work=work)
    for sub in WORK_DIRS:
        (root / sub).mkdir(parents=True, exist_ok=True)
        for p in (work / sub).iterdir():
            stem = format_key(vid, int(p.stem)) if sub in CLIP_DIRS else str(vid)
            name = f"{stem}{p.suffix}"
            os.replace(p, root / sub / name)
    result.meta.id = result.id = vid
    result.meta.save(meta_path(root, vid))
    shutil.rmtree(work, ignore_errors=True)
    return result


def process_video(
    path: str | Path, out_root: str | Path, vid: int, opts: PreprocessOptions | None = None
) -> ClipResult:
    """Turn one video into clip `vid` under out_root (frames from 1); raises VideoError,
    ClipError, LandmarkerError or FeatureError naming the file and cause on failure."""
    opts = opts or PreprocessOptions()
    work = Path(out_root) / ".tmp" / f"{vid}.{os.getpid()}"
    try:
        return commit_clip(work, out_root, vid, build_clip(path, work, opts))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _make_meta(path, info, boxes, long_gaps, opts, dim, notes) -> ClipMeta:
    """ClipMeta for a built clip (id filled in at commit)."""
    constant = bool((boxes == boxes[0]).all())
    return ClipMeta(
        id=0,
        source=str(Path(path).resolve()),
        source_size=(info.width, info.height),
        source_fps=info.fps,
        n_frames=len(boxes),
        size=opts.size,
        box=[int(v) for v in boxes[0]] if constant else None,
        boxes=None if constant else boxes.astype(int).tolist(),
        fps=FPS,
        crop_mode=opts.crop_mode,
        invalid_frames=[[g.start + 1, g.end] for g in long_gaps],
        landmarker=opts.landmarker,
        audio_features=opts.audio_features,
        feature_dim=dim,
        notes=notes,
    )
