"""The web app: checkpoint and upload errors without a browser, then the page end to end in
headless Chromium (Playwright) against scripts/app.py on a free localhost port."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from ldm.app.studio import AppSettings, InputError, RenderRequest, Studio
from ldm.preprocessing import synthetic
from ldm.video import ffmpeg_exe, probe, read_frames

from conftest import ROOT, SHARED_DATA, load_script

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PORTRAIT_CLIP = SHARED_DATA / "clips" / "vox_00473_224px.mp4"
ANDREW = SHARED_DATA / "speakers" / "andrew_clip_1.mp4"  # the app's model "was trained" on him
SPEECH = SHARED_DATA / "audio" / "RD_Radio34_002.wav"
RENDER_TIMEOUT_MS = 300_000  # two shared CPU cores: generous
EXTRAS = "pip install -r requirements-app.txt"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def studio(tiny, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    outdir = tmp_path_factory.mktemp("app_out")
    s = Studio(AppSettings(ckpt=tiny["ckpt"], config=[tiny["config"]], outdir=outdir))
    assert s.load(), s.status
    return s


def speech_file(path: Path, seconds: float, gain: float = 1.0) -> Path:
    """Speech-like 16 kHz wav (gain 0: digital silence)."""
    sf.write(path, gain * synthetic.speech_like_audio(seconds), 16000)
    return path


# --------------------------------------------------------------------------- without a browser


def test_without_a_checkpoint_the_page_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/demo here
    s = Studio(AppSettings(outdir=tmp_path / "out"))
    assert not s.load()
    assert "scripts/demo.py" in s.status and "main.py" in s.status
    with pytest.raises(InputError, match="No usable DiffTalk checkpoint"):
        s.render(RenderRequest(image=tmp_path / "face.png"))
    s = Studio(AppSettings(ckpt=tmp_path / "missing.ckpt", config=[tmp_path / "none.yaml"]))
    assert not s.load()
    assert "cannot be used" in s.status and "scripts/demo.py" in s.status


def test_cli_says_how_to_install_gradio_when_missing(monkeypatch, caplog):
    monkeypatch.delitem(sys.modules, "ldm.app.ui", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert load_script("app").main(["--port", "1"]) == 1
    assert "pip install -r requirements-app.txt" in caplog.text


def test_bad_uploads_give_readable_messages(studio, tmp_path):
    speech = speech_file(tmp_path / "speech.wav", 0.5)
    video = synthetic.make_face_video(tmp_path / "portrait.mp4", seconds=0.4)
    (tmp_path / "notes.txt").write_text("not a portrait")
    (tmp_path / "broken.mp4").write_bytes(b"\x00 definitely not a video" * 40)
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((200, 200, 3), 128, np.uint8))
    mute = tmp_path / "mute.mp4"
    synthetic.encode(mute, synthetic.face_frames(10))
    cases = {
        "upload one portrait": RenderRequest(audio=speech),
        "unsupported file type": RenderRequest(video=tmp_path / "notes.txt", audio=speech),
        "not a readable media file": RenderRequest(video=tmp_path / "broken.mp4", audio=speech),
        "has no sound": RenderRequest(video=mute),
        "the audio is silent": RenderRequest(
            video=video, audio=speech_file(tmp_path / "silent.wav", 0.5, gain=0.0)
        ),
        "shorter than one video frame": RenderRequest(
            video=video, audio=speech_file(tmp_path / "short.wav", 0.02)
        ),
        "empty.mp4: no face": RenderRequest(
            video=synthetic.make_face_video(tmp_path / "empty.mp4", seconds=0.4, faces=0),
            audio=speech,
        ),
        "wall.png: no face": RenderRequest(image=wall, audio=speech),
        "no reference bank": RenderRequest(video=video, audio=speech, reference="bank"),
    }
    for message, req in cases.items():
        with pytest.raises(InputError) as err:
            studio.render(req)
        assert message in str(err.value), str(err.value)
        assert str(tmp_path) not in str(err.value)  # file names, not temporary paths
    assert not list(studio.settings.outdir.glob("*.mp4"))


def test_photo_portrait_renders_an_mp4_with_sound(studio, tmp_path):
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), synthetic.head_image()[..., ::-1])  # 270 x 270
    req = RenderRequest(image=photo, audio=speech_file(tmp_path / "s.wav", 0.5), steps=3, seed=1)
    result = studio.render(req)
    info = probe(result.video)
    assert (info.width, info.height, info.has_audio) == (270, 270, True)
    assert len(read_frames(result.video, fps=None)) == result.n_frames == 12
    assert result.plot is None and result.summary == ""


# --------------------------------------------------------------------------- in Chromium


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, timeout: float = 240) -> None:
    """Poll ``url`` until it answers 200; fail with the server log if the process dies first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"scripts/app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"no answer from {url} in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def single_speaker_checkpoint(tiny: dict, out: Path) -> Path:
    """The tiny checkpoint recording one training identity, andrew's face (skips when his clip
    is absent), as a model trained on him alone would."""
    from ldm.preprocessing.identity import CHECKPOINT_KEY, Identities, face_describer

    if not ANDREW.is_file():
        pytest.skip(f"{ANDREW} is absent (the test reads ../shared/data beside the project)")
    descriptor = face_describer().describe(read_frames(ANDREW, max_frames=1)[0])
    assert descriptor is not None, f"no face found in {ANDREW}"
    ckpt = torch.load(tiny["ckpt"], weights_only=True)
    ckpt[CHECKPOINT_KEY] = Identities(descriptor[None], np.array([1]), np.array([0])).to_entry()
    torch.save(ckpt, out)
    return out


@pytest.fixture
def app_url(request, tmp_path):
    """scripts/app.py with the tiny checkpoint (recording andrew as its one training identity)
    on a free port; stopped after the test."""
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium is not installed ({CHROMIUM}; apt-get install chromium, as .ci/run)")
    pytest.importorskip("gradio", reason=f"the app extras are absent: {EXTRAS}")
    pytest.importorskip("playwright.sync_api", reason=f"Playwright is absent: {EXTRAS}")
    tiny = request.getfixturevalue("tiny")  # built only once the browser test can run
    ckpt = single_speaker_checkpoint(tiny, tmp_path / "tiny-andrew.ckpt")
    port, log = free_port(), tmp_path / "server.log"
    cmd = [sys.executable, str(ROOT / "scripts/app.py"), "--ckpt", str(ckpt)]
    cmd += ["--config", str(tiny["config"]), "--port", str(port), "--threads", "1"]
    cmd += ["--outdir", str(tmp_path / "out")]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logging.getLogger(__name__).info("server log:\n%s", log.read_text()[-2000:])


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path]:
    """The shared portrait clip cut to 1.2 s (with its sound) and 1.0 s of the shared speech."""
    for path in (PORTRAIT_CLIP, SPEECH):
        if not path.is_file():
            pytest.skip(f"{path} is absent (the test reads ../shared/data beside the project)")
    clip = tmp_path / "portrait.mp4"
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(PORTRAIT_CLIP), "-t", "1.2", str(clip)]
    subprocess.run(cmd, check=True, capture_output=True)
    wav, sr = sf.read(SPEECH)
    sf.write(tmp_path / "speech.wav", wav[:sr], sr)
    return clip, tmp_path / "speech.wav"


def render_and_wait(page, selector: str) -> None:
    """Press Render, see the progress bar, wait for ``selector``."""
    page.click("#render")
    page.wait_for_selector(".progress-text", state="attached", timeout=60_000)
    page.wait_for_selector(selector, timeout=RENDER_TIMEOUT_MS)


def check_player(page) -> None:
    """The result <video> loads in Chromium: no media error, 224 px wide, a duration."""
    page.wait_for_function(
        "() => { const v = document.querySelector('#result video');"
        " return v && v.readyState >= 1; }",
        timeout=60_000,
    )
    state = page.evaluate(
        "() => { const v = document.querySelector('#result video');"
        " return {error: v.error, width: v.videoWidth, duration: v.duration}; }"
    )
    assert state["error"] is None and state["width"] == 224 and state["duration"] > 0.5, state


@pytest.fixture
def chromium(app_url, tmp_path):
    """A page of headless Chromium (a new empty profile) on the app; yields (page, requests)."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            accept_downloads=True,
        )
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.goto(app_url)
        page.wait_for_selector("#render")
        yield page, requests
        browser.close()


def check_result_file(result: Path, clip: Path) -> None:
    """25 frames of 224 px with sound; the mouth changed, the forehead did not."""
    info = probe(result)
    assert (info.width, info.height, info.has_audio) == (224, 224, True)
    frames = read_frames(result, fps=None)
    source = read_frames(clip, max_frames=len(frames))
    assert len(frames) == 25  # 1.0 s of speech at 25 fps
    changed = np.abs(frames.astype(int) - source).max(-1) > 40  # (T, H, W)
    assert changed[:, 150:].any() and not changed[:, :60].any()


@pytest.mark.slow
def test_page_renders_in_chromium(media, chromium, app_url, tmp_path):
    page, requests = chromium
    clip, speech = media
    assert "tiny-andrew.ckpt" in page.inner_text("#status")
    assert not page.is_visible("#identity-warning")
    page.set_input_files("#portrait-video input[type=file]", str(clip))
    assert page.input_value("#eta input[type=number]") == "1"  # the demo's DDIM, eta 1
    page.fill("#steps input[type=number]", "3")
    page.press("#steps input[type=number]", "Enter")

    # a silent speech file: a readable message in the page
    silent = speech_file(tmp_path / "silent.wav", 1.0, gain=0.0)
    page.set_input_files("#speech input[type=file]", str(silent))
    page.click("#render")
    toast = page.wait_for_selector("[data-testid=toast-text]", timeout=60_000)
    assert "silent.wav: the audio is silent" in toast.inner_text()
    page.click("[data-testid=toast-close]")
    page.click("#speech button[aria-label=Clear]")

    # portrait + speech: the player, the download, frames and sound of the file
    page.set_input_files("#speech input[type=file]", str(speech))
    render_and_wait(page, "#result video[src]")
    check_player(page)
    assert "Rendered 25 frames" in page.inner_text("#done")
    warning = page.inner_text("#identity-warning")  # the portrait is not andrew
    assert "Warning: not a face this model knows" in warning, warning
    assert "trained on 1 person and the portrait is someone else" in warning
    with page.expect_download() as download:
        page.click("#download a")
    result = tmp_path / download.value.suggested_filename
    download.value.save_as(result)
    check_result_file(result, clip)

    # no speech: the portrait video drives itself and the page shows its evaluation
    page.click("#speech button[aria-label=Clear]")
    render_and_wait(page, "#plot img")
    check_player(page)
    report = page.inner_text("#report")
    assert "prediction" in report and "baseline: copy reference frame" in report
    outside = [u for u in requests if not u.startswith((app_url, "data:", "blob:"))]
    assert not outside, f"the page fetched from outside localhost: {outside[:5]}"
