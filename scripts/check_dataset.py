"""Validate a DiffTalk dataset: counts, shapes, key lists and landmark sanity.

Example:
    python scripts/check_dataset.py data/HDTF                 # lists default to data/data_*.txt
    python scripts/check_dataset.py data/HDTF --quick          # sample ~10 frames per id
Exit code 0 when no error was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ldm.preprocessing.check import check_dataset

log = logging.getLogger("check_dataset")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root", nargs="?", default="data/HDTF", help="dataset root (default data/HDTF)")
    p.add_argument(
        "--lists", nargs="*", help="key lists (default: {root}/../data_{train,test}.txt)"
    )
    p.add_argument("--quick", action="store_true", help="check a sample of frames per id")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the checks and log a report; 0 if the dataset is usable."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = Path(args.root)
    lists = args.lists
    if lists is None:
        lists = [p for p in (root.parent / "data_train.txt", root.parent / "data_test.txt")]
    report = check_dataset(root, lists, full=not args.quick)
    for w in report.warnings:
        log.warning(w)
    for e in report.errors:
        log.error(e)
    stats = ", ".join(f"{k}: {v}" for k, v in report.stats.items())
    verdict = "OK" if report.ok else f"{len(report.errors)} error(s)"
    log.info("%s: %s (%s; %d warning(s))", root, verdict, stats, len(report.warnings))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
