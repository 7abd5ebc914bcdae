"""The demo's shortened pipeline on the built-in sample, run as the README runs it (``sh demo.sh
--quick``): the model beats copying the reference."""

from __future__ import annotations

import json
import subprocess

import pytest

from ldm.evaluation.evaluate import FOLLOWS_SPEECH_CORR
from ldm.video import probe

from conftest import ROOT


@pytest.mark.slow
def test_quick_demo_learns_lips_better_than_the_copy_reference_baseline(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        ["sh", "demo.sh", "--quick", "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = probe(out / "result.mp4")
    truth = probe(out / "clips" / "test.mp4")
    assert result.has_audio and abs(result.n_frames - truth.n_frames) <= 1
    assert (out / "side_by_side.mp4").is_file() and (out / "frames.png").is_file()
    overall = json.loads((out / "report" / "report.json").read_text())["overall"]
    model, copy = overall["prediction"], overall["copy_reference"]
    assert model["lmd"] < copy["lmd"]  # mouth shapes closer to the truth than a still mouth
    assert model["mouth_corr"] > FOLLOWS_SPEECH_CORR  # and follow the speech, as the report says
    assert model["follows_speech"] is True
