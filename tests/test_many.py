"""One model for many faces: a per-speaker mouth predictor rendering a new face from its
reference frame, and whether the driving speech is the portrait's own."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
import torch
from test_demo_recipe import (  # noqa: F401
    SIZE,
    commands,
    demo_model,
    demo_splits,
    kl_first_stage,
    talking_demo_args,
)
from test_train import data  # noqa: F401

from ldm.config import load_config
from ldm.data.talk import TalkInference
from ldm.demo.many import MANY, ManyPipeline
from ldm.demo.pipeline import ADAPT, Pipeline, max_time
from ldm.inference import checkpoint
from ldm.inference.checkpoint import load_model
from ldm.inference.identity import MANY_SPEAKERS
from ldm.inference.render import Renderer, RenderOptions

from conftest import ROOT, load_script

pytestmark = pytest.mark.usefixtures("one_thread")
inference = load_script("inference")


def test_a_per_speaker_model_renders_the_reference_faces_mouth(demo_model, data, monkeypatch):  # noqa: F811
    _, model, _ = demo_model
    monkeypatch.setattr(model.mouth_model, "per_speaker", True)
    items = TalkInference(
        split_file=str(data / "data_test.txt"), root=str(data / "HDTF"), size=SIZE
    )
    first = items[0]
    predictor = model.mouth_model
    reference = predictor.code(
        *(
            torch.as_tensor(first[k], dtype=torch.float32)[None]
            for k in ("reference_mouth_landmarks", "reference_landmarks")
        )  # fmt: skip
    )[0]
    audio = torch.as_tensor(first["audio_smooth"])
    opts = dict(sampler="dpm", steps=2, batch_size=4, progress=False)
    own = Renderer(model, RenderOptions(reference_speech=True, **opts)).person_offset(first)
    rest = Renderer(model, RenderOptions(**opts)).person_offset(first)
    with torch.no_grad():
        motion = predictor(audio[None])[0] - predictor.bias
    torch.testing.assert_close(rest, reference - predictor.bias)
    torch.testing.assert_close(own, reference - predictor.bias - motion)

    seen = []  # the codes the model is conditioned on while rendering
    original = model.get_learned_conditioning

    def spy(batch, reference_latent=None):
        seen.append(batch["mouth_code"])
        return original(batch, reference_latent)

    monkeypatch.setattr(model, "get_learned_conditioning", spy)
    renderer = Renderer(model, RenderOptions(reference_speech=True, **opts))
    renderer.render(items, first["reference_img"])
    batch_audio = torch.stack([torch.as_tensor(items[i]["audio_smooth"]) for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(seen[0], predictor(batch_audio) + own)


def test_the_cli_knows_when_the_speech_is_the_portraits_own(tmp_path):
    clip, speech = tmp_path / "me.mp4", tmp_path / "speech.wav"
    for path in (clip, speech):
        path.touch()
    args = ["--ckpt", "x.ckpt", "--out", str(tmp_path / "o.mp4")]
    own = inference.parse_args([*args, "--video", str(clip), "--audio", str(clip)])
    other = inference.parse_args([*args, "--video", str(clip), "--audio", str(speech)])
    photo = inference.parse_args([*args, "--image", str(clip), "--audio", str(clip)])
    split = inference.parse_args(["--ckpt", "x.ckpt", "--split", str(speech)])
    dubbed = inference.parse_args(["--ckpt", "x.ckpt", "--split", str(speech), "--audio-id", "3"])
    assert [inference.own_speech(a) for a in (own, other, photo, split, dubbed)] == [
        True, False, False, True, False,
    ]  # fmt: skip


def test_portrait_mode_defaults_to_the_many_speaker_model_and_its_config(tmp_path, monkeypatch):
    clip = tmp_path / "me.mp4"
    clip.touch()
    portrait = ["--video", str(clip), "--audio", str(clip), "--out", str(tmp_path / "o.mp4")]
    monkeypatch.setattr(checkpoint, "MANY_SPEAKER", tmp_path / "models" / "many_speaker")
    with pytest.raises(SystemExit) as exc:  # none exported yet: --ckpt is needed, and said so
        inference.parse_args(portrait)
    assert exc.value.code == 2
    folder = fake_many_model(tmp_path / "models" / "many_speaker")
    (folder / "config.yaml").touch()
    args = inference.parse_args(portrait)
    assert args.ckpt == folder / "model.ckpt" and args.config == [str(folder / "config.yaml")]
    run = tmp_path / "logs" / "run"  # a Lightning run's checkpoint: the run's own config
    for name in ("configs/1-project.yaml", "configs/2-project.yaml", "checkpoints/last.ckpt"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).touch()
    args = inference.parse_args([*portrait, "--ckpt", str(run / "checkpoints/last.ckpt")])
    assert args.config == [str(run / "configs/2-project.yaml")]
    split = inference.parse_args(["--ckpt", str(folder / "model.ckpt"), "--split", str(clip)])
    assert split.config == list(checkpoint.DEFAULT_CONFIG)  # the paper protocol's, as before
    with pytest.raises(SystemExit):  # the split protocol names its checkpoint
        inference.parse_args(["--split", str(clip)])


def test_the_committed_many_speaker_model_matches_its_checksums_and_loads_for_new_faces():
    """models/many_speaker/, portrait mode's default: the files its README's checksums name, a
    config that builds the model its weights fill, and a model meant for faces it never saw."""
    folder = ROOT / checkpoint.MANY_SPEAKER
    ckpt = checkpoint.default_model(folder)
    assert ckpt == folder / "model.ckpt"
    readme = (ROOT / "models" / "README.md").read_text()
    for name in ("model.ckpt", "first_stage.ckpt"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert f"`{name}` |" in readme and digest in readme, name
    assert (folder / "model.sha256").read_text().split()[0] in readme
    config = load_config(list(map(str, checkpoint.model_config(ckpt))))
    assert "data" not in config and config.model.params.use_ema is False
    model = load_model(config, ckpt)  # strict: every weight has its place
    assert model.mouth_model.per_speaker and bool(model.mouth_model.fitted)
    assert model.identities.n_persons >= MANY_SPEAKERS
    first_stage = torch.load(folder / "first_stage.ckpt", weights_only=True)["state_dict"]
    for key, value in model.first_stage_model.state_dict().items():
        assert torch.equal(first_stage[key], value), key


def fake_many_model(folder):
    """The files ``--init`` needs (contents are not read before training)."""
    folder.mkdir(parents=True)
    for name in ("model.ckpt", "first_stage.ckpt"):
        (folder / name).touch()
    return folder


def test_real_clips_adapt_the_many_speaker_model(tmp_path, commands, caplog):  # noqa: F811
    """... when --init names one (by default real clips train from nothing, even where
    models/many_speaker/ exists); the adapted run takes its first stage and its UNet, fine-tunes
    them under shorter time caps and refits the mouth predictor."""
    demo = load_script("demo")
    folder = fake_many_model(tmp_path / "many")
    clips = ["a.mp4", "b.mp4"]
    args = demo.parse_args([*clips, "--init", str(folder)])
    with caplog.at_level("INFO"):
        assert demo.starting_point(args, sample=False) == folder.resolve()
        assert "adapting the many-speaker model" in caplog.text
        assert demo.starting_point(demo.parse_args(clips), sample=False) is None
        assert "training from nothing (no --init)" in caplog.text
        assert demo.starting_point(args, sample=True) is None
    missing = demo.parse_args([*clips, "--init", str(tmp_path / "none")])
    with pytest.raises(checkpoint.CheckpointError, match="none: no model.ckpt there"):
        demo.starting_point(missing, sample=False)
    assert demo.demo_budget(False, False, False, adapt=True) is ADAPT

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "first_stage.ckpt").touch()
    demo_splits(tmp_path / "run")
    pipe = Pipeline(tmp_path / "run", ADAPT, init=folder)
    pipe.first_stage(625)
    pipe.talking(625, tmp_path / "run" / "first_stage.ckpt")
    assert f"model.params.ckpt_path={folder / 'first_stage.ckpt'}" in commands["first_stage"]
    talking = commands["talking"]
    assert f"model.params.ckpt_path={folder / 'model.ckpt'}" in talking
    ignore = next(a for a in talking if a.startswith("model.params.ignore_keys="))
    assert "first_stage_model." in ignore and "mouth_model.weight" in ignore
    assert "mouth_model.embed" not in ignore  # the code's embedding is learned: kept
    for stage, cap in (("first_stage", ADAPT.ae_minutes), ("talking", ADAPT.ldm_minutes)):
        assert f"lightning.trainer.max_time={max_time(cap)}" in commands[stage]


def test_zero_shot_renders_from_the_clips_first_frame_with_stochastic_ddim(tmp_path):
    args = ManyPipeline(tmp_path, MANY).sampling()
    assert args[args.index("--sampler") + 1] == "ddim" and args[args.index("--eta") + 1] == "1"
    assert args[args.index("--reference") + 1] == "first" and "--shared-noise" in args


@pytest.mark.slow
def test_the_many_speaker_command_trains_renders_zero_shot_and_exports(tmp_path):
    """`sh demo.sh --many DIR --test CLIP --quick`: a shortened run of the whole command on
    synthetic clips; the exported folder is a model that loads for rendering."""
    from ldm.demo.sample import make_demo_clip

    clips = tmp_path / "clips"
    clips.mkdir()
    for seed in (0, 1):
        make_demo_clip(clips / f"speaker{seed}.mp4", seconds=3.0, seed=seed)
    test = make_demo_clip(tmp_path / "new_face.mp4", seconds=2.0, seed=2)
    out = tmp_path / "many"
    proc = subprocess.run(
        ["sh", "demo.sh", "--many", str(clips), "--test", str(test), "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "many speakers: 2 training clips, 1 held out" in proc.stderr
    folder = out / "many_speaker"
    digest = hashlib.sha256((folder / "model.ckpt").read_bytes()).hexdigest()
    assert (folder / "model.sha256").read_text().split()[0] == digest
    saved = torch.load(folder / "model.ckpt", weights_only=True)
    assert "identities" in saved and not any("model_ema." in k for k in saved["state_dict"])
    config = load_config([str(folder / "config.yaml")])
    assert config.model.params.use_ema is False and "data" not in config  # no paths of this machine
    model = load_model(config, folder / "model.ckpt")
    assert model.mouth_model.per_speaker and bool(model.mouth_model.fitted)
    first_stage = torch.load(folder / "first_stage.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(first_stage["decoder.conv_out.weight"],
                       model.first_stage_model.decoder.conv_out.weight)  # fmt: skip
    report = (out / "zero_shot" / "new_face" / "report" / "report.md").read_text()
    assert "pose-aligned" in report and "first stage only" in report
