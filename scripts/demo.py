"""DiffTalk end to end on a CPU: preprocess -> first stage -> talking LDM -> render -> evaluate.

    python scripts/demo.py                          # the built-in sample (no download)
    python scripts/demo.py a.mp4 b.mp4 c.mp4        # one speaker's clips: the last is held out
    python scripts/demo.py clips/ --test c.mp4      # a folder of clips, c.mp4 held out
    python scripts/demo.py talk.mp4                 # one clip: the last 20% is held out
    python scripts/demo.py --quick                  # a shortened run (the test suite's version)
    python scripts/demo.py --many corpus/ --test x.mp4   # one model for many faces (zero-shot)

The held-out clip is rendered from its own audio and scored against the truth. Training steps
follow the number of training frames (ldm/demo/pipeline.py, Budget); on real clips each training
also stops when its minutes run out (10 and 9), unless ``--no-time-limit``. Each finished stage
leaves a marker in ``{out}/.done/``, and an interrupted training resumes from its last.ckpt, so
a rerun of the same command continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from ldm.demo.many import run_many
from ldm.demo.pipeline import ADAPT, FULL, QUICK, SAMPLE, SAMPLE_QUICK, Budget, Pipeline
from ldm.demo.steps import prepare_footage
from ldm.inference.checkpoint import (
    EXPORTED_FIRST_STAGE,
    EXPORTED_WEIGHTS,
    MANY_SPEAKER,
    CheckpointError,
)
from ldm.video import VideoError

logger = logging.getLogger("demo")
SAMPLE_SECONDS = {False: 60.0, True: 30.0}  # built-in sample length: full, --quick


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("videos", nargs="*", help="one speaker's clips or folders (default: sample)")
    p.add_argument(
        "--test",
        nargs="+",
        help="the clip to hold out (default: the last one given); with "
        "--many, clips of people who are not in training, rendered zero-shot",
    )
    p.add_argument(
        "--init",
        type=Path,
        help=f"start from a many-speaker model's folder (e.g. {MANY_SPEAKER}, made by --many) "
        "instead of from nothing; at this scale it trains a worse model (docs/many-speaker.md)",
    )
    p.add_argument(
        "--many",
        action="store_true",
        help="the clips are of many people: train one model for all of them (about 3 hours), "
        "render the --test clips zero-shot and export it to {out}/many_speaker/",
    )
    p.add_argument("--out", default="outputs/demo", help="where everything goes")
    p.add_argument("--quick", action="store_true", help="a shortened run (minutes)")
    p.add_argument(
        "--no-time-limit",
        action="store_true",
        help="train the full step budget however long it takes (default: on real clips the first "
        "stage stops after 10 min and the talking LDM after 9, so a slower CPU trains fewer steps)",
    )
    return p.parse_args(argv)


def starting_point(args: argparse.Namespace, sample: bool) -> Path | None:
    """The many-speaker model a real-clip run adapts (logged), or None: trained from nothing."""
    if sample or args.init is None:
        reason = "the built-in sample" if sample else "no --init"
        logger.info("training from nothing (%s)", reason)
        return None
    for name in (EXPORTED_WEIGHTS, EXPORTED_FIRST_STAGE):
        if not (args.init / name).is_file():
            raise CheckpointError(f"--init {args.init}: no {name} there (made by demo.sh --many)")
    logger.info("adapting the many-speaker model in %s to this speaker", args.init)
    return args.init.resolve()


def demo_budget(sample: bool, quick: bool, no_time_limit: bool, adapt: bool = False) -> Budget:
    """The Budget of a run: the built-in sample's or real clips', full or --quick, from nothing
    or adapting a many-speaker model."""
    if sample:
        return SAMPLE_QUICK if quick else SAMPLE
    budget = QUICK if quick else ADAPT if adapt else FULL
    if no_time_limit:
        budget = dataclasses.replace(budget, ae_minutes=None, ldm_minutes=None)
    return budget


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    out = Path(args.out).resolve()
    start = time.perf_counter()
    if args.many:
        return many_main(args, out, start)
    if args.test and len(args.test) > 1:
        logger.error("--test takes one clip (several only with --many)")
        return 2
    test = args.test[0] if args.test else None
    sample = not (args.videos or args.test)
    try:
        init = starting_point(args, sample)
        footage = prepare_footage(args.videos, test, out / "clips", SAMPLE_SECONDS[args.quick])
    except (CheckpointError, VideoError) as exc:
        logger.error("%s", exc)
        return 1
    train = [c.name for c in footage.clips if c != footage.test]
    logger.info("training on %s; held out: %s", ", ".join(train), footage.test.name)
    budget = demo_budget(sample, args.quick, args.no_time_limit, init is not None)
    pipe = Pipeline(out, budget, sample=sample, init=init)
    n_frames = pipe.preprocess(footage)
    first_stage = pipe.first_stage(n_frames)
    run_dir = pipe.talking(n_frames, first_stage)
    paths = pipe.render_and_score(run_dir, footage)
    logger.info("finished in %.1f min", (time.perf_counter() - start) / 60)
    for name, path in paths.items():
        logger.info("%-13s %s", name, path)
    logger.info("report:\n%s", Path(paths["report"]).read_text())
    return 0


def many_main(args: argparse.Namespace, out: Path, start: float) -> int:
    """--many: one model for many faces (ldm/demo/many.py)."""
    if not args.videos:
        logger.error("--many needs clips or folders of many people")
        return 2
    try:
        paths = run_many(args.videos, args.test or [], out, args.quick)
    except VideoError as exc:
        logger.error("%s", exc)
        return 1
    logger.info("finished in %.1f min", (time.perf_counter() - start) / 60)
    for name, path in paths.items():
        logger.info("%-13s %s", name, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
