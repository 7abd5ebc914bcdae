"""The demo recipe's pieces: KL first stage swapped in by config, scale_by_std, first-stage-only
rendering, footage splitting and the step budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import common_overrides, data, data_overrides, load_main, the_logdir  # noqa: F401

from ldm.config import load_config
from ldm.demo.pipeline import (
    AE_CONFIG,
    FIRST_STAGE_SPLIT,
    FULL,
    NO_BAR,
    SAMPLE,
    SAMPLE_AE,
    Budget,
    Pipeline,
    batch_size,
)
from ldm.demo.steps import expand_videos, split_footage
from ldm.inference.checkpoint import load_model
from ldm.video import VideoError, write_video

from conftest import ROOT, load_script

SMALL = ROOT / "configs/latent-diffusion/talking-small.yaml"
DEMO = ROOT / "configs/latent-diffusion/talking-demo.yaml"
KL_SMALL = ROOT / "configs/autoencoder/kl_f4_small.yaml"
SIZE = 32
pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_later_config_that_changes_target_replaces_the_node():
    config = load_config([str(SMALL), str(DEMO)], [])
    first = config.model.params.first_stage_config
    assert first.target == "ldm.models.autoencoder.AutoencoderKL"
    assert "n_embed" not in first.params  # the VQ-only key did not leak into the KL node
    assert first.params.ddconfig.double_z is True
    unet = config.model.params.unet_config
    assert unet.target.endswith("UNetModel")  # same target: merged, not replaced
    assert unet.params.in_channels == 44 and unet.params.model_channels == 32  # demo + small
    assert config.model.params.channels == unet.params.out_channels == 8


def kl_first_stage(root, tmp_path) -> tuple:
    """Train the KL first stage 4 steps on the tiny 32 px data with main.py; its checkpoint."""
    main = load_main()
    logs = tmp_path / "ae"
    argv = ["--base", str(KL_SMALL), "-t", "-l", str(logs), "--max_steps", "4"]
    argv += [f"model.params.ddconfig.resolution={SIZE}", "lightning.trainer.limit_val_batches=1"]
    argv += [*data_overrides(root, images=True), *common_overrides()]
    argv += ["data.params.train.params.crop_size=16"]
    assert main.main(argv) == 0
    return the_logdir(logs) / "checkpoints" / "last.ckpt"


def talking_demo_args(root, logs, ae_ckpt) -> list[str]:
    m = "model.params"
    return [
        "--base", str(SMALL), str(DEMO), "-t", "-l", str(logs), "--max_steps", "3",
        f"{m}.first_stage_config.params.ckpt_path={ae_ckpt}",
        f"{m}.first_stage_config.params.ddconfig.resolution={SIZE}",
        f"{m}.image_size={SIZE // 4}", f"{m}.unet_config.params.image_size={SIZE // 4}",
        f"{m}.mouth_window=4",  # of the 8 x 8 latent of 32 px frames
        f"{m}.audio_config.params.feature_dim=29",  # the test data's log-mel, not Whisper
        f"{m}.mouth_config.params.feature_dim=29",
        f"{m}.mouth_config.params.prior=null",  # the committed prior reads Whisper features
        "lightning.callbacks.image_logger.params.ddim_steps=2",
        "lightning.trainer.limit_val_batches=1",
        *data_overrides(root), *common_overrides(),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def demo_model(data, tmp_path_factory):  # noqa: F811
    """A talking-demo run (KL first stage, scale_by_std) of 3 steps; (run dir, model, config)."""
    tmp = tmp_path_factory.mktemp("demo_recipe")
    ae_ckpt = kl_first_stage(data, tmp)
    logs = tmp / "ldm"
    assert load_main().main(talking_demo_args(data, logs, ae_ckpt)) == 0
    run = the_logdir(logs)
    config = load_config(sorted((run / "configs").glob("*-project.yaml")), [])
    return run, load_model(config, run / "checkpoints" / "last.ckpt"), config


def test_scale_by_std_measures_the_first_batch_and_the_checkpoint_keeps_it(demo_model, data):  # noqa: F811
    run, model, config = demo_model
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "scale_factor" in state
    stored = float(state["scale_factor"])
    assert stored != 1.0 and float(model.scale_factor) == stored  # restored, not the YAML's 1.0
    # the value is 1 / std of the first stage's latents of training frames (same data)
    from ldm.data.talk import TalkTrain

    ds = TalkTrain(split_file=str(data / "data_train.txt"), root=str(data / "HDTF"), size=SIZE)
    images = torch.stack([torch.as_tensor(ds[i]["image"]) for i in range(len(ds))])
    with torch.no_grad():
        z = model.encode_batch_images(images)
    assert stored == pytest.approx(1.0 / float(z.std()), rel=0.35)  # first batch vs all frames


def test_a_mouth_code_in_the_batch_conditions_the_model_in_place_of_its_audio(demo_model):
    """At render time the bank's predicted code (``mouth_code``) is the audio's prediction, not
    computed twice; another code in the batch changes the feature."""
    _, model, _ = demo_model
    model.eval()
    audio = torch.randn(2, 8, 16, 29)
    side = model.frame_size  # where the mouth sketch is drawn: a face inside the frame
    face = {"landmarks": (torch.rand(2, 39, 2) * 0.5 + 0.25) * side}
    with torch.no_grad():
        code = model.mouth_model(audio)
        from_audio = model.audio_condition(face, audio)
        given = model.audio_condition({**face, "mouth_code": code}, audio)
        other = model.audio_condition({**face, "mouth_code": code + 1.0}, audio)
    for key, value in from_audio.items():  # the feature and, in the recipe, the sketch
        assert torch.allclose(given[key], value) and not torch.allclose(other[key], value)


def test_the_mouth_model_replaces_the_audio_networks_in_model_and_checkpoint(demo_model, tmp_path):
    from ldm.modules.encoders.modules import AudioAttNet, AudioNet

    run, model, config = demo_model
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("mouth_model.") for k in state)
    assert not any(k.startswith("cond_stage_model_for_audio") for k in state)
    assert model.cond_stage_model_for_audio is None and model.audio_feature_dim == 29
    # a checkpoint written while such models still carried them (frozen, unused) loads
    old = dict(state)
    for name, net in (("cond_stage_model_for_audio", AudioNet(feature_dim=29)),
                      ("cond_stage_model_for_audio_smooth", AudioAttNet())):  # fmt: skip
        old |= {f"{name}.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": old}, tmp_path / "old.ckpt")
    loaded = load_model(config, tmp_path / "old.ckpt")
    assert torch.equal(loaded.mouth_model.weight, model.mouth_model.weight)


def through_autoencoder(model, image: torch.Tensor) -> np.ndarray:
    """(1, H, W, 3) uint8 of ``image`` (H, W, 3) encoded and decoded by the first stage."""
    with torch.no_grad():
        out = model.first_stage_model.decode(model.encode_batch_images(image[None])).clamp(-1, 1)
    return ((out + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)


@pytest.mark.parametrize(
    "renderer, known, source",
    [("first_stage_only", 1.0, "image"), ("bank_paste", 0.0, "reference"),
     ("bank_paste", 1.0, "image")],
)  # fmt: skip
def test_no_sampling_renders_decode_the_frame_or_the_reference(demo_model, renderer, known, source):
    """First stage only: the truth through the autoencoder (the ceiling). The bank-paste
    benchmark: the frame's latent where it is known, the reference's where it is masked."""
    from ldm.inference.render import Renderer, RenderOptions

    _, model, _ = demo_model
    rng = np.random.default_rng(0)
    image, reference = (
        torch.as_tensor(rng.uniform(-1, 1, (SIZE, SIZE, 3)).astype(np.float32)) for _ in range(2)
    )
    item = {
        "image": image, "image_mask": image, "landmarks": torch.zeros(39, 2),
        "audio_smooth": torch.zeros(8, 16, 29),
        "inference_mask": torch.full((1, SIZE // 4, SIZE // 4), known),
    }  # fmt: skip
    if renderer == "first_stage_only":
        render = Renderer(model, RenderOptions(progress=False, first_stage_only=True))
    else:
        bank_paste = load_script("bank_paste", "benchmarks")
        render = bank_paste.BankPaste(model, RenderOptions(progress=False))
    frames = render.render([item], reference.numpy())
    expected = through_autoencoder(model, {"image": image, "reference": reference}[source])
    # the render scales the latent by scale_factor and back: float rounding may move a level
    diff = np.abs(frames.astype(int) - expected)
    assert diff.max() <= 1 and diff.mean() < 0.01
    sampled = Renderer(model, RenderOptions(sampler="dpm", steps=2, progress=False))
    assert not np.array_equal(sampled.render([item], reference.numpy()), frames)


def test_budget_follows_the_training_frames_and_the_configs_batch_sizes():
    assert FULL.first_stage(150, 16) == 1200  # 6 s of footage: 96 passes would be 900
    assert FULL.first_stage(450, 16) == 2700  # 18 s: 96 passes at batch 16
    assert FULL.talking(400, 16) == 1500 and FULL.talking(625, 16) == 1500  # 80 passes, capped
    assert FULL.talking(250, 16) == 1250 and FULL.first_stage(300, 8) == 3600  # 80 and 96 passes
    assert FULL.talking(100, 16) == 1000  # a few seconds: the minimum
    assert FULL.first_stage(625, 16) == 3750  # 25 s
    assert FULL.first_stage(1000, 16) == 4800 == FULL.first_stage(10_000, 16)  # 40 s on: capped
    custom = Budget(ae_epochs=2.0, ae_steps=(1, 10**6), ldm_epochs=1.0, ldm_steps=(1, 10**6))
    assert custom.first_stage(800, 8) == 200 and custom.first_stage(800, 4) == 400
    assert custom.talking(800, 32) == 25  # passes x frames / batch
    # the pipeline takes each batch size from the configs and overrides it trains with
    yaml_batch = load_config([str(KL_SMALL)], []).data.params.batch_size
    assert batch_size([str(KL_SMALL)], []) == yaml_batch
    assert batch_size([str(SMALL), str(DEMO)], ["data.params.batch_size=5"]) == 5


@pytest.fixture
def commands(tmp_path, monkeypatch) -> dict[str, list[str]]:
    """The command line each demo stage would run (stage -> argv), none of them run."""
    seen: dict[str, list[str]] = {}
    monkeypatch.setattr(Pipeline, "run", lambda self, stage, cmd: seen.setdefault(stage, cmd))
    monkeypatch.setattr("ldm.demo.pipeline.latest_run", lambda logs, stage: tmp_path)
    return seen


def test_trainings_that_log_progress_turn_the_bar_off(tmp_path, commands):
    for sample in (False, True):
        pipe = Pipeline(tmp_path / str(sample), SAMPLE, sample=sample)
        commands.clear()
        first_stage = [SAMPLE_AE[0]] if sample else [AE_CONFIG]
        pipe.train("first_stage", first_stage, 10, pipe.data_overrides(images=True))
        pipe.talking(100, tmp_path / "first_stage.ckpt")
        # kl_f4_small and both talking configs have a ProgressETA; the sample's VQ has none
        assert (NO_BAR in commands["first_stage"]) is not sample
        assert NO_BAR in commands["talking"]


def test_real_clips_train_under_a_time_limit_unless_told_not_to():
    demo = load_script("demo")
    assert demo.demo_budget(sample=False, quick=False, no_time_limit=False) is FULL
    free = demo.demo_budget(sample=False, quick=False, no_time_limit=True)
    assert free.ae_minutes is None and free.ldm_minutes is None
    assert (free.ae_steps, free.ldm_steps) == (FULL.ae_steps, FULL.ldm_steps)
    assert demo.demo_budget(sample=True, quick=False, no_time_limit=True) is SAMPLE


def demo_splits(out: Path, n_train: int = 40, n_test: int = 9) -> None:
    """The split lists preprocessing writes for a run in ``out``: ids 1 train, 2 held out."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "data" / "data_train.txt").write_text("".join(f"1_{f}\n" for f in range(1, n_train + 1)))
    (out / "data" / "data_test.txt").write_text("".join(f"2_{f}\n" for f in range(1, n_test + 1)))


def test_the_real_speaker_budget_caps_each_training_by_time(tmp_path, commands):
    (tmp_path / "first_stage.ckpt").touch()
    demo_splits(tmp_path)
    for budget, caps in ((FULL, ("00:00:10:00", "00:00:09:00")), (SAMPLE, (None, None))):
        commands.clear()
        pipe = Pipeline(tmp_path, budget, sample=budget is SAMPLE)
        pipe.first_stage(625)
        pipe.talking(625, tmp_path / "first_stage.ckpt")
        for stage, cap in zip(("first_stage", "talking"), caps, strict=True):
            given = [a for a in commands[stage] if a.startswith("lightning.trainer.max_time=")]
            assert given == ([] if cap is None else [f"lightning.trainer.max_time={cap}"])


def make_clip(path, audio: bool = True, seconds: float = 1.0):
    frames = np.full((int(25 * seconds), 32, 32, 3), 128, np.uint8)
    wav = None
    if audio:
        import soundfile as sf

        wav = path.with_suffix(".wav")
        sf.write(wav, np.zeros(int(16000 * seconds), np.float32), 16000)
    write_video(path, frames, 25.0, audio_path=wav)
    return path


def test_footage_split_last_clip_test_flag_folder_and_single_clip(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    a, b, c = (make_clip(clips / f"{n}.mp4") for n in "abc")
    (clips / "notes.txt").write_text("not a video")
    videos = expand_videos([str(clips)])
    assert videos == [a.resolve(), b.resolve(), c.resolve()]
    last = split_footage(videos, None, tmp_path / "cut")
    assert last.test == c.resolve() and last.clips[:-1] == (a.resolve(), b.resolve())
    chosen = split_footage(videos, b, tmp_path / "cut")
    assert chosen.test == b.resolve() and set(chosen.clips[:-1]) == {a.resolve(), c.resolve()}
    single = split_footage([make_clip(tmp_path / "one.mp4", seconds=2.0)], None, tmp_path / "cut")
    from ldm.video import probe

    n_train, n_test = (probe(p).n_frames for p in single.clips)
    assert n_train + n_test == pytest.approx(50, abs=2) and n_test == pytest.approx(10, abs=2)


def test_demo_refuses_silent_or_missing_clips_naming_them(tmp_path):
    silent = make_clip(tmp_path / "silent.mp4", audio=False)
    with pytest.raises(VideoError, match="silent.mp4: has no audio"):
        split_footage([silent], None, tmp_path / "cut")
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", str(tmp_path / "nope.mp4"), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "nope.mp4: no such file or folder" in proc.stderr
    assert not (tmp_path / ".done").exists()


def test_similarity_alignment_moves_the_reference_onto_the_target_pose():
    import math

    from ldm.geometry import STABLE_POINTS
    from ldm.models.diffusion.reference_align import align_references

    image = torch.zeros(1, 3, 64, 64)
    image[:, :, 20:30, 30:40] = 1.0  # a bright square centred at (34.5, 24.5)
    pts = torch.rand(1, 39, 2, generator=torch.Generator().manual_seed(0)) * 40 + 12
    a, centre, shift = math.radians(10), torch.tensor([32.0, 32.0]), torch.tensor([3.0, -2.0])
    rot = 1.1 * torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    target = (pts - centre) @ rot.T + centre + shift
    target[:, [i for i in range(39) if i not in STABLE_POINTS]] = 0.0  # only eyes/nose count
    out = align_references(image, pts, target)
    ys, xs = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
    expected = (torch.tensor([34.5, 24.5]) - centre) @ rot.T + centre + shift
    assert abs(xs.float().mean() - expected[0]) < 0.3 and abs(ys.float().mean() - expected[1]) < 0.3
    same = align_references(image, pts, pts)  # identity: unchanged
    torch.testing.assert_close(same, image, atol=1e-4, rtol=0)


def test_colour_matching_maps_another_light_onto_the_target_face():
    from ldm.data.layout import UPPER_FACE_LANDMARKS
    from ldm.geometry import COLOUR_POINTS
    from ldm.models.diffusion.reference_align import match_colours

    from conftest import face_template

    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 64, 64, generator=g) * 0.8 - 0.4
    lms = torch.from_numpy(face_template(64))[list(UPPER_FACE_LANDMARKS)].expand(2, 39, 2)
    gain = torch.tensor([0.6, 1.3, 0.9]).view(1, 3, 1, 1)
    other_light = target * gain + torch.tensor([0.2, -0.1, 0.05]).view(1, 3, 1, 1)
    masked = target.clone()
    masked[:, :, 40:] = -1.0  # the hidden lower face must not count
    out = match_colours(other_light, masked, lms)
    torch.testing.assert_close(out, target, atol=1e-4, rtol=0)  # an affine light is undone
    assert min(COLOUR_POINTS) >= 0 and all(lms[0, list(COLOUR_POINTS), 1] < 40)
    same = match_colours(target, target, lms)
    torch.testing.assert_close(same, target, atol=1e-5, rtol=0)


def test_mouth_window_follows_the_nose_and_stays_inside_the_latent():
    from ldm.models.diffusion import mouth_window as mw

    lms = torch.zeros(3, 39, 2)
    lms[:, mw.NOSE_TIP] = torch.tensor([[64.0, 70.0], [4.0, 4.0], [124.0, 124.0]])  # 128 px
    corners = mw.window_corners(lms, 128, 32, 20)
    assert corners.tolist() == [[18 - mw.NOSE_ROWS_ABOVE, 6], [0, 0], [12, 12]]
    x = torch.arange(3 * 2 * 32 * 32, dtype=torch.float32).reshape(3, 2, 32, 32)
    part = mw.crop(x, corners, 20)
    assert part.shape == (3, 2, 20, 20) and part[0, 0, 0, 0] == x[0, 0, 12, 6]
    torch.testing.assert_close(mw.paste(torch.zeros_like(x), part, corners).sum(), part.sum())
    torch.testing.assert_close(mw.paste(x, part, corners), x)  # pasting its own crop: no change


def test_min_snr_weights_cap_the_clean_timesteps_only(demo_model):
    _, model, _ = demo_model
    model.snr_gamma = 5.0
    t = torch.tensor([0, 100, 999])
    w = model.min_snr_weight(t)
    abar = model.alphas_cumprod[t]
    snr = abar / (1 - abar)
    assert snr[0] > 5 and w[0] == pytest.approx(5 / float(snr[0]))  # nearly clean: down-weighted
    assert snr[2] < 5 and w[2] == 1.0  # noisy: unchanged
    model.snr_gamma = None


def test_the_real_speaker_first_stage_also_learns_the_held_out_reference_frame(tmp_path, commands):
    (tmp_path / "first_stage.ckpt").touch()
    demo_splits(tmp_path, n_train=40)
    Pipeline(tmp_path, FULL).first_stage(40)
    split = [a for a in commands["first_stage"] if a.startswith("data.params.train.params.split")]
    assert split == [f"data.params.train.params.split_file={tmp_path / 'data' / FIRST_STAGE_SPLIT}"]
    keys = (tmp_path / "data" / FIRST_STAGE_SPLIT).read_text().split()
    train = [f"1_{f}" for f in range(1, 41)]
    assert keys[:40] == train and keys[40:] == ["2_1"] * 4  # a tenth of the samples, frame 1 only
    assert not any(k.startswith("2_") and k != "2_1" for k in keys)  # no other held-out frame
    commands.clear()
    Pipeline(tmp_path, SAMPLE, sample=True).first_stage(40)  # the built-in sample: as before
    assert (
        f"data.params.train.params.split_file={tmp_path / 'data' / 'data_train.txt'}"
        in (commands["first_stage"])
    )


def test_both_recipes_render_with_stochastic_ddim_real_clips_with_one_x_t_and_bank_mouths(tmp_path):
    real = Pipeline(tmp_path / "real", FULL).sampling()
    sample = Pipeline(tmp_path / "sample", SAMPLE, sample=True).sampling()
    for args in (real, sample):
        assert args[args.index("--sampler") + 1] == "ddim"
        assert args[args.index("--eta") + 1] == "1"  # a new noise each step (ancestral)
    assert "--shared-noise" in real and real[real.index("--reference") + 1] == "bank"
    assert "--no-shared-noise" in sample and "--reference" not in sample  # its first frame
