"""Score generated talking-head clips against the truth, offline (DiffTalk's paper metrics).

Example:
    python scripts/evaluate.py --pred result.mp4 --gt truth.mp4 --baselines --out outputs/eval

Inputs are videos (resampled to --fps) or folders of frames (sorted by their trailing number).
Reports PSNR/SSIM over the frame and the lower face, LMD, mouth-opening correlation, and LPIPS /
SyncNet LSE-D/LSE-C when their weights are given. Writes {out}/report.json, {out}/report.md and a
plot {out}/{clip}.png per clip. Several clips: --pred a.mp4 b.mp4 --gt a_gt.mp4 b_gt.mp4.
--first-stage-frames adds a row for the truth passed through the first stage (one clip only).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ldm.data.layout import FPS
from ldm.download.models import DEFAULT_LPIPS_ALEX, DEFAULT_SYNCNET, existing
from ldm.evaluation import WeightsError
from ldm.evaluation import lpips as lpips_mod
from ldm.evaluation import syncnet as syncnet_mod
from ldm.evaluation.clips import ClipError, ClipFrames, match_sources, read_audio
from ldm.evaluation.evaluate import (
    FIRST_STAGE,
    FOLLOWS_SPEECH_CORR,
    SHIFT_FRAMES,
    ClipResult,
    Scorers,
    baseline_label,
    evaluate_clip,
    summarize_row,
)
from ldm.evaluation.report import markdown_tables, write_report

log = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pred", nargs="+", required=True, help="generated video(s) or frame folder(s)")
    p.add_argument("--gt", nargs="+", required=True, help="ground truth, one per --pred")
    p.add_argument("--out", default="outputs/evaluation", help="report folder")
    p.add_argument(
        "--baselines",
        action="store_true",
        help="add copy-reference (as it is and pose-aligned), shifted-truth and truth rows",
    )
    p.add_argument("--shift-frames", type=int, default=SHIFT_FRAMES, help="shifted-truth offset")
    p.add_argument("--fps", type=float, default=FPS, help="frame rate videos are read at")
    p.add_argument("--max-frames", type=int, help="use at most the first N frames of each clip")
    p.add_argument("--audio", nargs="+", help="driving audio per clip (default: pred, else gt)")
    p.add_argument("--landmarker", choices=("dlib", "fan"), default="dlib")
    p.add_argument(
        "--lpips-weights",
        default=existing(DEFAULT_LPIPS_ALEX),
        help=f"AlexNet-LPIPS state dict file or folder (default: {DEFAULT_LPIPS_ALEX} if present)",
    )
    p.add_argument(
        "--syncnet-weights", default=existing(DEFAULT_SYNCNET),
        help=f"syncnet_v2.model state dict (default: {DEFAULT_SYNCNET} if present)",
    )  # fmt: skip
    p.add_argument(
        "--first-stage-frames", metavar="PATH",
        help="video or frame folder of the truth encoded + decoded by the first stage and pasted\n"
        "back (read like --pred); adds a 'first stage only' row. Single clip only.",
    )  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if len(args.pred) != len(args.gt):
        p.error(f"{len(args.pred)} --pred but {len(args.gt)} --gt: give one truth per prediction")
    if args.audio and len(args.audio) != len(args.gt):
        p.error("give one --audio per clip")
    if args.first_stage_frames and len(args.gt) > 1:
        p.error(
            f"--first-stage-frames is for a single clip, got {len(args.gt)} --pred/--gt pairs: "
            "evaluate the clips one by one"
        )
    return args


def build_scorers(args: argparse.Namespace, notes: list[str]) -> tuple[Scorers, dict]:
    """Landmarker plus LPIPS/SyncNet when their weights were given; statuses for the report."""
    from ldm.preprocessing.landmarks import make_landmarker

    status = {}
    scorers = Scorers(make_landmarker(args.landmarker))
    if args.lpips_weights:
        scorers.lpips = lpips_mod.load_lpips(args.lpips_weights)
        status["lpips"] = f"AlexNet-LPIPS v0.1 from {args.lpips_weights}"
    else:
        status["lpips"] = "skipped: no --lpips-weights"
        notes.append(f"LPIPS skipped. {lpips_mod.ENABLE_HELP}.")
    if args.syncnet_weights:
        scorers.syncnet = syncnet_mod.load_syncnet(args.syncnet_weights)
        status["syncnet"] = f"syncnet_v2 from {args.syncnet_weights}"
    else:
        status["syncnet"] = "skipped: no --syncnet-weights"
        notes.append(f"LSE-C/LSE-D skipped. {syncnet_mod.ENABLE_HELP}.")
    for key, value in status.items():
        log.info("%s: %s", key, value)
    return scorers, status


def clip_audio(args: argparse.Namespace, i: int, notes: list[str]):
    """Driving audio of clip i for SyncNet: --audio, else the prediction's, else the truth's."""
    sources = [args.audio[i]] if args.audio else [args.pred[i], args.gt[i]]
    for src in sources:
        audio = read_audio(src)
        if audio is not None:
            log.info("SyncNet audio of clip %d: %s", i + 1, src)
            return audio, str(src)
    notes.append("no audio in " + " or ".join(map(str, sources)) + ": LSE-C/LSE-D skipped")
    return None, None


def evaluate_pair(args: argparse.Namespace, i: int, name: str, scorers: Scorers) -> ClipResult:
    """Read, match and score the i-th prediction/truth pair."""
    pred_path, gt_path = args.pred[i], args.gt[i]
    gt = ClipFrames(gt_path, args.fps, args.max_frames)
    pred = ClipFrames(pred_path, args.fps, args.max_frames)
    pred, gt, notes = match_sources(pred, gt, f"prediction {pred_path}", f"truth {gt_path}")
    log.info("%s: prediction %s, truth %s, %d frames", name, pred_path, gt_path, len(gt))
    extra_rows = []
    if args.first_stage_frames:
        first, pred, gt = read_first_stage(args, pred, gt, notes)
        extra_rows.append((FIRST_STAGE, baseline_label(FIRST_STAGE), first))
    audio = None
    if scorers.syncnet is not None:
        audio, src = clip_audio(args, i, notes)
        if src:
            notes.append(f"LSE audio: {src}")
    return evaluate_clip(
        pred, gt, scorers, name=name, paths=(str(pred_path), str(gt_path)),
        baselines=args.baselines, shift=args.shift_frames, fps=args.fps, audio=audio, notes=notes,
        extra_rows=extra_rows,
    )  # fmt: skip


def read_first_stage(
    args: argparse.Namespace, pred: ClipFrames, gt: ClipFrames, notes: list[str]
) -> tuple[ClipFrames, ClipFrames, ClipFrames]:
    """--first-stage-frames read and matched to the truth like --pred; (first, pred, gt) are
    cut to one length and the changes added to `notes`."""
    path = args.first_stage_frames
    first = ClipFrames(path, args.fps, args.max_frames)
    first, gt, more = match_sources(first, gt, f"first stage {path}", f"truth {args.gt[0]}")
    log.info("first stage only: %s, %d frames", path, len(first))
    notes += [*more, f"first stage only: {path}"]
    return first, pred.limited(len(gt)), gt


def warn_not_following(results: list[ClipResult]) -> None:
    """A WARNING for each method row whose mouth does not follow the speech."""
    for clip in results:
        for row in clip.rows:
            s = summarize_row(row, clip.gt_opening)
            if s.get("follows_speech") is False:
                log.warning(
                    "%s: %s does not follow the speech (mouth-open corr %.3f < %g), whatever "
                    "its LMD and PSNR say",
                    clip.name, row.label, s["mouth_corr"], FOLLOWS_SPEECH_CORR,
                )  # fmt: skip


def clip_names(paths: list[str]) -> list[str]:
    """Unique clip names from the truth file names."""
    names = []
    for p in paths:
        stem = Path(p).stem or Path(p).name
        names.append(stem if stem not in names else f"{stem}_{len(names) + 1}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; 0 on success, 1 when an input or weight file cannot be used."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    notes: list[str] = []
    try:
        scorers, status = build_scorers(args, notes)
        results = [
            evaluate_pair(args, i, name, scorers) for i, name in enumerate(clip_names(args.gt))
        ]
    except (ClipError, WeightsError) as err:
        log.error("cannot evaluate: %s", err)
        return 1
    settings = {
        "fps": args.fps, "shift_frames": args.shift_frames, "landmarker": args.landmarker,
        "baselines": args.baselines, "max_frames": args.max_frames,
        "first_stage_frames": args.first_stage_frames, "follows_speech_corr": FOLLOWS_SPEECH_CORR,
        **status,
    }  # fmt: skip
    paths = write_report(results, args.out, settings, notes)
    per_clip, overall = markdown_tables(results)
    log.info("per clip:\n%s\n\noverall:\n%s", per_clip, overall)
    for note in notes:
        log.info("note: %s", note)
    warn_not_following(results)
    log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
