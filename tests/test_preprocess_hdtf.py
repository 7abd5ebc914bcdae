"""scripts/preprocess.py with HDTF's own crops (crop_wh windows, crop_ratio) and the original's
identity numbering and split from a name list."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ldm.download.hdtf import clip_key
from ldm.preprocessing.crop import window_box
from ldm.preprocessing.dataset import ClipMeta, meta_path
from ldm.preprocessing.synthetic import make_face_video

from conftest import load_script

pp = load_script("preprocess")


def test_clip_key_unifies_the_spellings() -> None:
    for name in ("Radio34_0.mp4", "RD_Radio34_000.mp4", "/mnt/cfs/HDTF/RD_Radio34_000.mp4"):
        assert clip_key(name) == "Radio34_0"
    assert clip_key("WDA_BarackObama_001") == "BarackObama_1" and clip_key("Radio1") == "Radio1"


def test_window_box_squares_scales_and_clamps() -> None:
    assert window_box((466, 0, 535, 535), 1280, 720, 2).tolist() == [[466, 0, 535]] * 2
    # drawn at 720p, the clip came at 360p: half the pixels
    assert window_box((466, 0, 535, 535), 640, 360, 1, scale=0.5).tolist() == [[233, 0, 268]]
    # not square: side max(w, h) around the centre, kept inside the frame
    assert window_box((10, 20, 100, 60), 200, 160, 1).tolist() == [[10, 0, 100]]
    assert window_box((150, 0, 100, 100), 200, 160, 1).tolist() == [[100, 0, 100]]


@pytest.fixture(scope="module")
def hdtf_clips(tmp_path_factory) -> dict:
    """Two synthetic clips named as download_hdtf names them and their RD annotation files."""
    d = tmp_path_factory.mktemp("hdtf")
    videos = d / "raw"
    videos.mkdir()
    for name in ("Radio1_0", "Radio2_0"):
        make_face_video(videos / f"{name}.mp4", seconds=0.6, width=200, height=160, face_px=50)
    ann = d / "HDTF_dataset"
    ann.mkdir()
    (ann / "RD_video_url.txt").write_text("Radio1 https://youtu.be/a\nRadio2 https://youtu.be/b\n")
    (ann / "RD_annotion_time.txt").write_text("Radio1.mp4 00:00-00:01\nRadio2.mp4 00:05-00:06\n")
    (ann / "RD_resolution.txt").write_text("Radio1.mp4 160\nRadio2.mp4 320\n")  # Radio2: 2x
    (ann / "RD_crop_wh.txt").write_text("Radio1_0.mp4 40 120 10 120\nRadio2_0.mp4 80 200 0 200\n")
    (ann / "RD_crop_ratio.txt").write_text("Radio1_0.mp4 0.9\nRadio2_0.mp4 1.2\n")
    return {"videos": videos, "ann": ann, "root": d}


def preprocess(hdtf_clips: dict, out: str, *extra: str) -> tuple[int, Path]:
    """preprocess.py on the two clips: exit code and dataset root."""
    root = hdtf_clips["root"] / out / "HDTF"
    argv = [str(hdtf_clips["videos"]), "--out", str(root), "--size", "64"]
    return pp.main([*argv, "--hdtf-annotations", str(hdtf_clips["ann"]), *extra]), root


def meta(root: Path, vid: int) -> ClipMeta:
    """A processed clip's crop record."""
    return ClipMeta.load(meta_path(root, vid))


def test_hdtf_windows_and_the_original_numbering_and_split(hdtf_clips: dict) -> None:
    names = hdtf_clips["root"] / "names.txt"
    # HDTF's and the community's spelling (the original's train_name.txt holds paths of the latter)
    names.write_text("# the original's ids\n5 /mnt/HDTF/RD_Radio2_000.mp4 train\n7 Radio1_0 test\n")
    code, root = preprocess(hdtf_clips, "win", "--crop", "hdtf", "--name-list", str(names))
    assert code == 0
    assert Path(meta(root, 7).source).stem == "Radio1_0" and meta(root, 7).box == [40, 10, 120]
    assert Path(meta(root, 5).source).stem == "Radio2_0" and meta(root, 5).box == [40, 0, 100]
    test = (root.parent / "data_test.txt").read_text().split()
    train = (root.parent / "data_train.txt").read_text().split()
    assert test and {k.split("_")[0] for k in test} == {"7"}
    assert train and {k.split("_")[0] for k in train} == {"5"}


def test_hdtf_ratio_scales_the_fixed_crop(hdtf_clips: dict) -> None:
    code, root = preprocess(hdtf_clips, "ratio", "--crop", "hdtf-ratio")
    assert code == 0
    sides = {Path(meta(root, i).source).stem: meta(root, i).box[2] for i in (1, 2)}
    # same face in both clips: the sides follow the ratios (0.9 vs 1.2) within rounding
    assert sides["Radio2_0"] / sides["Radio1_0"] == pytest.approx(1.2 / 0.9, rel=0.03)


def test_a_clip_without_an_hdtf_window_fails_clearly(hdtf_clips: dict, caplog, tmp_path) -> None:
    caplog.set_level(logging.ERROR)
    extra = tmp_path / "clips"
    extra.mkdir()
    make_face_video(extra / "Other_0.mp4", seconds=0.4, width=200, height=160, face_px=50)
    root = tmp_path / "HDTF"
    argv = [str(extra), "--out", str(root), "--size", "64", "--crop", "hdtf"]
    code = pp.main([*argv, "--hdtf-annotations", str(hdtf_clips["ann"])])
    assert code == 1
    assert "Other_0.mp4: no crop window for Other_0 in HDTF's crop_wh" in caplog.text


def test_bad_name_list_and_missing_annotations_are_usage_errors(
    hdtf_clips, tmp_path, caplog, capsys
) -> None:
    bad = tmp_path / "names.txt"
    bad.write_text("5 Radio2_0 maybe\n")
    code, _ = preprocess(hdtf_clips, "bad", "--name-list", str(bad))
    assert code == 2 and "names.txt:1: expected 'id name [train|test]'" in caplog.text
    with pytest.raises(SystemExit):
        pp.parse_args(["x.mp4", "--crop", "hdtf"])  # no --hdtf-annotations
    assert "--crop hdtf needs --hdtf-annotations DIR" in capsys.readouterr().err
