"""Refresh the web app's screenshot (README, docs/rendering.md) with a real model and clip.

    python benchmarks/app_screenshot.py --ckpt runs/andrew/logs/<run>/checkpoints/last.ckpt \
        --clip clip.mp4 [--seconds 4]

Starts scripts/app.py on a free local port, opens it in headless Chromium (Playwright, as the
app's browser test), renders the clip driven by its own speech (so the page shows the
evaluation too) and saves the page as benchmarks/results/app_screenshot.png (256 colours).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldm.video import ffmpeg_exe  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "app_screenshot.png"
logger = logging.getLogger("app_screenshot")


def serve(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen, str]:
    """scripts/app.py on a free port; (process, url) once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, str(ROOT / "scripts/app.py"), "--ckpt", args.ckpt, "--port", str(port)]
    cmd += ["--outdir", str(tmp / "out")]
    if args.audio_features:  # else the app picks them from the model's feature width
        cmd += ["--audio-features", args.audio_features]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"scripts/app.py exited with {proc.returncode}") from None
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"{url} did not answer in 300 s")


def shoot(url: str, clip: Path, shot: Path) -> None:
    """Load ``clip`` into the page, render it self-driven, screenshot the whole page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium") or "/usr/bin/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#render")
        page.set_input_files("#portrait-video input[type=file]", str(clip))
        page.click("#render")
        page.wait_for_selector("#plot img", timeout=1_800_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--clip", required=True, type=Path, help="a portrait clip with speech")
    parser.add_argument("--audio-features", help="default: from the model's feature width")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the clip used")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        clip = tmp / args.clip.name
        cut = [ffmpeg_exe(), "-v", "error", "-y", "-i", str(args.clip), "-t", str(args.seconds)]
        subprocess.run([*cut, str(clip)], check=True)
        proc, url = serve(args, tmp)
        try:
            shoot(url, clip, tmp / "app.png")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        with Image.open(tmp / "app.png") as im:
            quantized = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
            quantized.save(OUT, optimize=True)
    logger.info("wrote %s", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
