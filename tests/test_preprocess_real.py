"""Preprocessing of the real clips in ../shared/data (HDTF 512 px, 30 fps, 224 px)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

from ldm.preprocessing.dataset import ClipMeta
from ldm.preprocessing.landmarks import make_landmarker
from ldm.preprocessing.pipeline import PreprocessOptions, process_video

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
pytestmark = [  # real clips: detection and cropping over many frames
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"real clips not found at {SHARED}"),
]


def _load_script(name: str):
    """Import scripts/{name}.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_clips(tmp_path):
    clips = {
        SHARED / "hdtf" / "RD_Radio34_000.mp4": 8.0,
        SHARED / "clips" / "KristiNoem_30fps.mp4": 18.07,
        SHARED / "clips" / "vox_00473_224px.mp4": 6.32,
    }
    root = tmp_path / "HDTF"
    assert _load_script("preprocess").main([str(p) for p in clips] + ["--out", str(root)]) == 0
    lm = make_landmarker()
    for vid, seconds in enumerate(clips.values(), start=1):
        meta = ClipMeta.load(root / "crops" / f"{vid}.json")
        assert abs(meta.n_frames - seconds * 25) <= 1
        for f in (1, meta.n_frames // 2, meta.n_frames):
            saved = np.loadtxt(root / "landmarks" / f"{vid}_{f}.lms")
            assert (saved[48:68] > 0).all() and (saved[48:68] < 255).all()
            img = cv2.imread(str(root / "images" / f"{vid}_{f}.jpg"))[..., ::-1]
            assert np.abs(lm.detect(img) - saved).mean() < 4.0
        assert np.load(root / "audio_smooth" / f"{vid}_1.npy").shape == (8, 16, 29)
    assert _load_script("check_dataset").main([str(root)]) == 0


def test_real_hdtf_track_crop_segment(tmp_path):
    opts = PreprocessOptions(crop_mode="track", crop_scale=1.4, max_frames=60, progress=False)
    result = process_video(SHARED / "hdtf" / "RD_Radio2_000.mp4", tmp_path, 2, opts)
    boxes = np.array(result.meta.boxes)
    assert result.n_frames == 60 and boxes.shape == (60, 3) and len(set(boxes[:, 2])) == 1
    assert np.abs(np.diff(boxes[:, :2], axis=0)).max() <= 3  # steady
    for f in (1, 30, 60):
        mouth = np.loadtxt(tmp_path / "landmarks" / f"2_{f}.lms")[48:68]
        assert (mouth > 0).all() and (mouth < 255).all()
    assert len(list(tmp_path.glob("audio_smooth/2_*.npy"))) == 60
