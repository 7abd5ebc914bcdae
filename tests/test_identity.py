"""No silent blobs: the faces a model was trained on travel with its checkpoint, and portrait mode
and the web app warn when a model of few speakers is asked to drive someone else (real faces from
../shared/data; small models these tests train)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from ldm.config import load_config
from ldm.data.datamodule import DataModuleFromConfig
from ldm.inference.checkpoint import load_model
from ldm.inference.identity import MANY_SPEAKERS, check_identity, check_portrait
from ldm.preprocessing import synthetic
from ldm.preprocessing.identity import (
    CHECKPOINT_KEY,
    SAME_PERSON_DISTANCE,
    Identities,
    dataset_identities,
    sample_frames,
)
from ldm.preprocessing.pipeline import PreprocessOptions, process_video
from ldm.util import instantiate_from_config
from ldm.video import read_frames

from conftest import SHARED_DATA, TINY_SIZE, load_script, make_tiny_dataset, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
log = logging.getLogger(__name__)

CLIPS = {  # video id in the test dataset -> clip (one person each, ../shared/data)
    1: "speakers/andrew_clip_1.mp4",
    2: "speakers/andrew_clip_2.mp4",
    3: "speakers/feifeili_clip1.mp4",
    4: "speakers/feifeili_clip2_short.mp4",
    5: "corpus/macron__french.mp4",
    6: "corpus/theresamay__may5s.mp4",
    7: "corpus/trump__trump10s.mp4",
    8: "corpus/klobuchar__edtalk-mouth.mp4",
    9: "corpus/spk8__german20s.mp4",
}
ANDREW, FEIFEILI, CORPUS = [1, 2], [3, 4], [5, 6, 7, 8, 9]
FRAMES = 12  # frames preprocessed per clip
WARNING_TEXT = "trained on 1 person and the portrait is someone else"


def frame_of(clip: str) -> np.ndarray:
    """The first frame (H, W, 3) RGB of a shared clip, the portrait's reference frame."""
    return read_frames(SHARED_DATA / clip, max_frames=1)[0]


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root of the first frames of 9 real clips of 7 persons, cropped at 128 px as
    the demo does (skips when ../shared/data is absent)."""
    for clip in CLIPS.values():
        if not (SHARED_DATA / clip).is_file():
            pytest.skip(f"{SHARED_DATA / clip} is absent (tests read ../shared/data)")
    root = tmp_path_factory.mktemp("faces")
    opts = PreprocessOptions(size=128, audio_features=None, max_frames=FRAMES, progress=False)
    for vid, clip in CLIPS.items():
        process_video(SHARED_DATA / clip, root, vid, opts)
    return root


def keys_of(ids: list[int]) -> np.ndarray:
    """(N, 2) keys of every preprocessed frame of these video ids."""
    return np.array([(v, f) for v in ids for f in range(1, FRAMES + 1)], np.int32)


@pytest.fixture(scope="module")
def andrew_only(faces) -> Identities:
    """The identities of a single-speaker training set: andrew's first clip."""
    return dataset_identities(faces, keys_of(ANDREW[:1]))


# --------------------------------------------------------------------------- descriptors


def test_sample_frames_spreads_frames_and_caps_ids():
    keys = np.array([(v, f) for v in range(1, 501) for f in range(1, 12)])
    picks = sample_frames(keys, frames_per_id=3, max_ids=200)
    assert len(picks) == 200 and min(picks) == 1 and max(picks) == 500
    assert all(frames == [1, 6, 11] for frames in picks.values())  # first, middle, last
    assert sample_frames(np.array([(7, 4), (7, 2)]), 3, 200) == {7: [2, 4]}


def test_training_videos_group_into_persons(faces):
    """Two clips each of andrew and feifeili, five other people: seven persons, each person's
    clips together."""
    found = dataset_identities(faces, keys_of([*ANDREW, *FEIFEILI, *CORPUS]))
    person = dict(zip(found.videos.tolist(), found.persons.tolist(), strict=True))
    assert sorted(person) == sorted(CLIPS) and found.no_face == []
    assert person[1] == person[2] and person[3] == person[4] and person[1] != person[3]
    assert found.n_persons == 7


def test_faceless_frames_record_no_identity(tmp_path, caplog):
    """Synthetic frames (landmarks but no face) give no descriptor: logged, nothing recorded, and
    the check then says it has nothing to compare."""
    data = make_tiny_dataset(tmp_path, n_ids=2, n_frames=4, size=TINY_SIZE)
    with caplog.at_level(logging.INFO):
        found = dataset_identities(data, np.array([(v, f) for v in (1, 2) for f in range(1, 5)]))
    assert len(found.videos) == 0 and found.no_face == [1, 2] and found.n_ids == 2
    assert "no face dlib could describe in 2 of 2 training video(s)" in caplog.text
    check = check_identity(found, np.zeros(128, np.float32))
    assert not check.checked and not check.warn


# --------------------------------------------------------------------------- the check


def test_single_speaker_model_warns_for_another_person_only(andrew_only, caplog):
    """A model of andrew: feifeili's portrait gets the warning (logged as a WARNING), andrew's
    other clip does not."""
    assert andrew_only.n_persons == 1
    with caplog.at_level(logging.INFO):
        other = check_portrait(andrew_only, frame_of("speakers/feifeili_clip3.mp4"))
        same = check_portrait(andrew_only, frame_of("speakers/andrew_clip_2.mp4"))
    log.info("andrew's model: feifeili %.3f, andrew %.3f", other.distance, same.distance)
    assert other.checked and other.warn and other.matched is False and other.n_persons == 1
    assert other.distance > SAME_PERSON_DISTANCE and WARNING_TEXT in other.message
    assert f"{other.distance:.2f} > {SAME_PERSON_DISTANCE}" in other.message
    assert "sh demo.sh" in other.message
    assert same.matched and not same.warn and same.distance < SAME_PERSON_DISTANCE
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [other.message]


def test_many_speaker_model_does_not_warn_for_a_new_face(faces):
    """A model of five other people: feifeili is a new face, and no warning (zero-shot)."""
    many = dataset_identities(faces, keys_of(CORPUS))
    assert many.n_persons == MANY_SPEAKERS == 5
    check = check_portrait(many, frame_of("speakers/feifeili_clip3.mp4"))
    assert check.checked and check.matched is False and not check.warn
    assert "zero-shot" in check.message
    fewer = Identities(many.descriptors[:4], many.videos[:4], many.persons[:4])
    assert check_portrait(fewer, frame_of("speakers/feifeili_clip3.mp4")).warn


def test_nothing_to_compare_gives_no_warning(andrew_only):
    """No record in the checkpoint, or no face in the portrait: not checked, no warning."""
    assert not check_identity(None, np.zeros(128, np.float32)).checked
    blank = np.full((240, 320, 3), 128, np.uint8)
    no_face = check_portrait(andrew_only, blank)
    assert not no_face.checked and not no_face.warn and "no face descriptor" in no_face.message


# --------------------------------------------------------------------------- training, checkpoints


def andrew_dataset(root: Path, faces: Path) -> Path:
    """A tiny training set: video 1 is andrew (real 128 px crops), video 2 synthetic (no face)."""
    data = make_tiny_dataset(root, n_ids=3, n_frames=8, size=TINY_SIZE)
    for f in range(1, 9):
        shutil.copy(faces / "images" / f"1_{f}.jpg", data / "images" / f"1_{f}.jpg")
        shutil.copy(faces / "landmarks" / f"1_{f}.lms", data / "landmarks" / f"1_{f}.lms")
    return data


def fit(model: torch.nn.Module, data: Path, split: Path, steps: int, ckpt: Path | None = None):
    """Train ``steps`` steps with Lightning on one CPU (resumed from ``ckpt`` if given)."""
    train = {"target": "ldm.data.talk.TalkTrain", "params": {
        "root": str(data), "split_file": str(split), "size": TINY_SIZE}}  # fmt: skip
    datamodule = DataModuleFromConfig(batch_size=2, train=train, num_workers=0)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, datamodule, ckpt_path=ckpt)
    return trainer


def tiny_model(cfg) -> torch.nn.Module:
    """A fresh tiny LatentDiffusion."""
    torch.manual_seed(0)
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 1e-4
    return model


@pytest.fixture(scope="module")
def trained(faces, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model trained one step on andrew's frames (and a faceless video), saved by
    Lightning: {"ckpt", "config", "data", "root", "model"}."""
    root = tmp_path_factory.mktemp("andrew_model")
    data = andrew_dataset(root, faces)
    cfg = tiny_config()
    model = tiny_model(cfg)
    trainer = fit(model, data, root / "data_train.txt", steps=1)
    ckpt, config = root / "andrew.ckpt", root / "andrew.yaml"
    trainer.save_checkpoint(ckpt)
    OmegaConf.save(cfg, config)
    return {"ckpt": ckpt, "config": config, "data": data, "root": root, "model": model}


def test_training_records_identities_in_the_checkpoint_not_the_state_dict(trained):
    """on_fit_start described the training videos; the checkpoint has them as a top-level entry
    and its state dict has exactly a fresh model's keys; load_model reads them back."""
    found = trained["model"].identities
    assert found.videos.tolist() == [1] and found.no_face == [2] and found.n_persons == 1
    raw = torch.load(trained["ckpt"], weights_only=True)
    assert CHECKPOINT_KEY in raw and raw[CHECKPOINT_KEY]["videos"] == [1]
    fresh = tiny_model(tiny_config()).state_dict()
    assert list(raw["state_dict"]) == list(fresh)
    loaded = load_model(load_config([trained["config"]]), trained["ckpt"]).identities
    np.testing.assert_array_equal(loaded.descriptors, found.descriptors)
    assert loaded.persons.tolist() == [0] and loaded.no_face == [2]


def test_resume_keeps_the_identities_without_describing_again(trained, monkeypatch):
    """A resumed run restores the identities from its checkpoint (describing again would fail
    here); one initialised from it (ckpt_path) keeps them and adds its own training's."""

    def refuse(*args, **kwargs):
        raise AssertionError("the training identities were described again")

    monkeypatch.setattr("ldm.models.diffusion.identities.dataset_identities", refuse)
    resumed = tiny_model(tiny_config())
    fit(resumed, trained["data"], trained["root"] / "data_train.txt", 2, trained["ckpt"])
    np.testing.assert_array_equal(
        resumed.identities.descriptors, trained["model"].identities.descriptors
    )
    monkeypatch.undo()
    faceless = trained["root"] / "faceless_train.txt"
    faceless.write_text("".join(f"2_{f}\n" for f in range(1, 9)))
    cfg = tiny_config()
    cfg.model.params.ckpt_path = str(trained["ckpt"])
    inherited = tiny_model(cfg)
    fit(inherited, trained["data"], faceless, 1)
    assert inherited.identities.videos.tolist() == [1] and inherited.identities.no_face == [2, 2]


def test_identities_stay_out_of_the_state_dict():
    """Identities are a plain attribute: no state-dict key (tests/test_model.py compares the
    paper config's keys with the original's), and a checkpoint gets one top-level entry."""
    model = tiny_model(tiny_config())
    before = list(model.state_dict())
    model.identities = Identities(np.zeros((1, 128), np.float32), np.array([1]), np.array([0]))
    assert list(model.state_dict()) == before
    checkpoint = {"state_dict": {}}
    model.on_save_checkpoint(checkpoint)
    assert sorted(checkpoint) == [CHECKPOINT_KEY, "state_dict"]
    model.on_load_checkpoint({"state_dict": {}})  # an older checkpoint: nothing recorded
    assert model.identities is None and not model.identities_recorded


# --------------------------------------------------------------------------- CLI and app


def portrait_png(path: Path, clip: str) -> Path:
    """A clip's first frame saved as a photo."""
    cv2.imwrite(str(path), frame_of(clip)[..., ::-1])
    return path


def test_cli_warns_when_the_andrew_model_drives_feifeili(trained, tmp_path, caplog):
    """scripts/inference.py with the model trained on andrew: a WARNING for feifeili's photo,
    none for andrew's other clip."""
    speech = tmp_path / "speech.wav"
    sf.write(speech, synthetic.speech_like_audio(0.3), 16000)
    cli = load_script("inference")
    base = ["--ckpt", trained["ckpt"], "--config", trained["config"], "--audio", speech]
    base += ["--sampler", "dpm", "--steps", "2"]
    for name, clip, warns in (
        ("feifeili", "speakers/feifeili_clip3.mp4", True),
        ("andrew", "speakers/andrew_clip_2.mp4", False),
    ):
        caplog.clear()
        photo = portrait_png(tmp_path / f"{name}.png", clip)
        argv = [*base, "--image", photo, "--out", tmp_path / f"{name}.mp4"]
        assert cli.main([str(a) for a in argv]) == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(WARNING_TEXT in w for w in warnings) == warns, warnings
        assert (tmp_path / f"{name}.mp4").is_file()
    assert "the portrait is a person the model was trained on" in caplog.text


def test_app_shows_the_warning_beside_the_result(trained, tmp_path):
    """The web app's render of feifeili with andrew's model carries the warning, and the page
    shows it (visible) next to the result; andrew's portrait has none."""
    from ldm.app.studio import AppSettings, RenderRequest, Studio

    studio = Studio(AppSettings(ckpt=trained["ckpt"], config=[trained["config"]], outdir=tmp_path))
    assert studio.load(), studio.status
    speech = tmp_path / "speech.wav"
    sf.write(speech, synthetic.speech_like_audio(0.3), 16000)
    results = {}
    for name, clip in (("feifeili", "feifeili_clip3"), ("andrew", "andrew_clip_2")):
        photo = portrait_png(tmp_path / f"{name}.png", f"speakers/{clip}.mp4")
        req = RenderRequest(image=photo, audio=speech, sampler="dpm", steps=2)
        results[name] = studio.render(req)
    assert WARNING_TEXT in results["feifeili"].identity_warning
    assert results["andrew"].identity_warning == ""
    ui = pytest.importorskip("ldm.app.ui", reason="the app extras (Gradio) are absent")
    shown = ui.identity_note(results["feifeili"].identity_warning)
    assert shown["visible"] and "This model was trained on 1 person" in shown["value"]
    assert not ui.identity_note("")["visible"]
