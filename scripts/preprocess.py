"""Turn talking-head videos into the DiffTalk dataset layout (SPEC sections 1-3).

Example:
    python scripts/preprocess.py a.mp4 b.webm videos_dir/ --out data/HDTF --workers 2

Writes {out}/images/{id}_{frame}.jpg, landmarks/{id}_{frame}.lms, audio_smooth/{id}_{frame}.npy,
data.txt, videos.tsv (id <-> source) and crops/{id}.json, plus the train/test key lists
(default: next to the output root, i.e. data/data_train.txt and data/data_test.txt).
Reruns skip finished videos; the exit code is 1 if any video failed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from ldm.download.hdtf import clip_key, load_annotations
from ldm.download.models import DEFAULT_AUDIO_MODELS, DEFAULT_FAN_DIR, existing
from ldm.preprocessing.audio_encoders import FeatureError
from ldm.preprocessing.audio_features import FEATURE_KINDS
from ldm.preprocessing.dataset import parse_id_spec, write_lists
from ldm.preprocessing.landmarks import LandmarkerError
from ldm.preprocessing.pipeline import PreprocessOptions, preflight
from ldm.preprocessing.runner import RunSummary, expand_inputs, run

log = logging.getLogger("preprocess")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("videos", nargs="*", help="video files or folders of videos (any ffmpeg input)")
    p.add_argument("--out", default="data/HDTF", help="dataset root (default: data/HDTF)")
    p.add_argument("--train-list", help="default: {out}/../data_train.txt")
    p.add_argument("--test-list", help="default: {out}/../data_test.txt")
    g = p.add_argument_group("frames and landmarks")
    g.add_argument("--size", type=int, default=256, help="side of the saved square crops")
    g.add_argument(
        "--crop",
        choices=("fixed", "track", "hdtf", "hdtf-ratio"),
        default="fixed",
        help="one box per clip (HDTF-like), a smoothed box that follows the face, HDTF's own\n"
        "window from {subset}_crop_wh.txt, or the fixed box with its side scaled by HDTF's\n"
        "{subset}_crop_ratio.txt (hdtf*: clips named {video}_{k} and --hdtf-annotations)",
    )
    g.add_argument("--hdtf-annotations", help="HDTF's HDTF_dataset folder, for --crop hdtf*")
    g.add_argument("--crop-scale", type=float, default=1.8, help="crop side / landmark extent")
    g.add_argument("--landmarker", choices=("dlib", "fan"), default="dlib")
    g.add_argument(
        "--fan-model-dir",
        help=f"TORCH_HOME-style folder whose checkpoints/ has FAN (default: {DEFAULT_FAN_DIR} if "
        "present, else torch.hub's)",
    )
    g.add_argument("--max-gap", type=int, default=12, help="longest faceless run interpolated")
    g.add_argument(
        "--max-missing",
        type=float,
        default=0.25,
        help="fail a clip with more faceless frames than this fraction",
    )
    g.add_argument("--max-frames", type=int, help="keep at most N frames (original lists: 1499)")
    g = p.add_argument_group("audio")
    g.add_argument("--audio-features", choices=FEATURE_KINDS, default="logmel")
    g.add_argument(
        "--audio-model",
        help="local model folder for wav2vec2/hubert/whisper (default for wav2vec2/hubert: "
        "models/{kind} if present)",
    )
    g.add_argument("--features-dir", help="deepspeech: folder of {video_stem}.npy arrays")
    g = p.add_argument_group("ids and splits")
    g.add_argument("--start-id", type=int, default=1, help="first id for new videos")
    g.add_argument("--id-map", help="TSV/space file of 'id path' lines fixing ids of videos")
    g.add_argument(
        "--name-list",
        help="the original's numbering: 'id name [train|test]' lines (or one name per line, id =\n"
        "line number); a video whose stem is `name` gets that id, and the test column sets\n"
        "the test list unless --test-ids/--test-videos are given",
    )
    g.add_argument("--test-ids", help="ids for the test list, e.g. 100-176")
    g.add_argument("--test-videos", nargs="+", help="file names (or stems) for the test list")
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="else the highest ceil(F * n) ids go to test (default 0.1)",
    )
    p.add_argument("--workers", type=int, default=1, help="videos processed in parallel")
    p.add_argument("--overwrite", action="store_true", help="redo videos already finished")
    p.add_argument("--lists-only", action="store_true", help="only rewrite data.txt and lists")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.crop.startswith("hdtf") and not args.hdtf_annotations:
        p.error(f"--crop {args.crop} needs --hdtf-annotations DIR (HDTF's HDTF_dataset folder)")
    return args


def read_name_list(path: str) -> tuple[dict[str, int], set[int]]:
    """({clip key: id}, test ids) from 'id name [train|test]' or 'name' lines; names may be
    paths and in HDTF's (Radio34_0) or the community's (RD_Radio34_000) spelling."""
    names, test = {}, set()
    for no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) == 1:
            parts = [str(no), parts[0]]
        if not parts[0].isdigit() or len(parts) > 3 or parts[2:] not in ([], ["train"], ["test"]):
            raise ValueError(f"{path}:{no}: expected 'id name [train|test]', got {line!r}")
        names[clip_key(parts[1])] = int(parts[0])
        if parts[2:] == ["test"]:
            test.add(int(parts[0]))
    return names, test


def fixed_ids(args: argparse.Namespace) -> tuple[dict[str, int] | None, set[int]]:
    """Resolved source path -> id from --name-list and --id-map (which wins), and the name
    list's test ids."""
    if not (args.name_list or args.id_map):
        return None, set()
    fixed, test = {}, set()
    if args.name_list:
        names, test = read_name_list(args.name_list)
        for src in expand_inputs(args.videos):
            if clip_key(src) in names:
                fixed[str(Path(src).resolve())] = names[clip_key(src)]
            else:
                log.warning("%s: not in --name-list %s; it gets a new id", src, args.name_list)
        args.start_id = max(args.start_id, max(names.values(), default=0) + 1)
    fixed.update(read_id_map(args.id_map) if args.id_map else {})
    return fixed, test


def hdtf_crops(folder: str) -> tuple[dict[str, tuple], dict[str, float]]:
    """HDTF's crop windows (x, y, w, h, listed height) and ratios by clip stem."""
    windows, ratios = {}, {}
    for v in load_annotations(Path(folder)):
        for k, c in v.crops.items():
            windows[f"{v.name}_{k}"] = (c.x, c.y, c.width, c.height, v.height)
        ratios.update({f"{v.name}_{k}": r for k, r in v.ratios.items()})
    return windows, ratios


def read_id_map(path: str) -> dict[str, int]:
    """Resolved source path -> id from 'id path' lines."""
    out = {}
    with open(path, newline="") as fh:
        for row in csv.reader(fh, delimiter="\t" if "\t" in Path(path).read_text() else " "):
            if row and row[0].strip().isdigit():
                out[str(Path(row[1].strip()).resolve())] = int(row[0])
    return out


def options(args: argparse.Namespace) -> PreprocessOptions:
    """PreprocessOptions from the command line."""
    lm_kw = {"model_dir": args.fan_model_dir} if args.landmarker == "fan" else {}
    windows, ratios = hdtf_crops(args.hdtf_annotations) if args.hdtf_annotations else ({}, {})
    return PreprocessOptions(
        size=args.size,
        landmarker=args.landmarker,
        landmarker_kw=lm_kw,
        audio_features=args.audio_features,
        audio_model=args.audio_model or existing(DEFAULT_AUDIO_MODELS.get(args.audio_features)),
        features_dir=args.features_dir,
        crop_mode=args.crop,
        crop_scale=args.crop_scale,
        crop_windows=windows,
        crop_ratios=ratios,
        max_gap=args.max_gap,
        max_missing=args.max_missing,
        max_frames=args.max_frames,
        progress=sys.stderr.isatty(),
    )


def report(summary: RunSummary) -> None:
    """Log the end-of-run summary."""
    log.info(
        "summary: %d processed, %d already done, %d failed",
        len(summary.done),
        len(summary.skipped),
        len(summary.failed),
    )
    for r in summary.done:
        t = ", ".join(f"{k} {v:.1f}s" for k, v in r.timings.items())
        log.info("  ok   id %d  %s  %d frames  (%s)", r.id, r.source, r.n_frames, t)
        for w in r.warnings:
            log.warning("  note id %d  %s", r.id, w)
    for src, msg in summary.failed:
        log.error("  FAIL %s", msg if src in msg else f"{src}: {msg}")


def main(argv: list[str] | None = None) -> int:
    """Run the preprocessing; 0 if every video succeeded, 1 if any failed, 2 on bad usage or a
    missing landmark/feature model."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    root = Path(args.out)
    if not args.videos and not args.lists_only:
        log.error("no input videos given (see --help)")
        return 2
    summary = RunSummary()
    try:
        fixed, list_test_ids = fixed_ids(args)
        opts = options(args)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    if not args.lists_only:
        try:
            preflight(opts)
        except (LandmarkerError, FeatureError) as exc:
            log.error("%s", exc)
            return 2
        summary = run(args.videos, root, opts, args.workers, args.start_id, fixed, args.overwrite)
    write_lists(
        root,
        args.train_list or root.parent / "data_train.txt",
        args.test_list or root.parent / "data_test.txt",
        test_ids=parse_id_spec(args.test_ids) or (set() if args.test_videos else list_test_ids),
        test_videos=args.test_videos,
        test_fraction=args.test_fraction,
    )
    report(summary)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
