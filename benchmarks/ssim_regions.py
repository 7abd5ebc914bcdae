"""Where a demo run's render loses mouth SSIM against its first stage only.

    python benchmarks/ssim_regions.py --run outputs/andrew \\
        --test ../shared/data/speakers/andrew_clip_2.mp4 [--every 3] [--band 8] [--figure maps.png]

The report's mouth SSIM is the mean of a per-pixel SSIM map over the lower-face box. This splits
that mean, for the render (``{run}/result.mp4``) and for the first stage only
(``{run}/first_stage_only.mp4``), into four regions of each box, from the truth's landmarks:

- ``lips``: the hull of the 20 mouth points, dilated by 0.15 eye distances;
- ``edge``: within ``--band`` px of the edge of the jaw polygon the model fills (landmarks 2..14
  closed at 33, the inference mask's polygon), outside the lips;
- ``inside``: the rest of the polygon;
- ``outside``: the rest of the box (the frame's own pixels in every render).

It prints each region's share of the box and both scores; a gap at the ``edge`` only is a seam, a
gap ``inside`` is the generated skin. ``--figure`` writes the mean maps on a normalised box (render,
first stage only, and their difference x 4).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

from ldm.data.layout import JAW_POLYGON
from ldm.evaluation.clips import read_clip
from ldm.evaluation.metrics import SSIM_RADIUS, crop, region_boxes, ssim_map
from ldm.preprocessing.landmarks import make_landmarker

logger = logging.getLogger("ssim_regions")
REGIONS = ("lips", "edge", "inside", "outside")
LIPS_DILATE = 0.15  # eye distances
FIGURE_SIZE = 64  # side of the normalised box in the figure


def region_masks(lms: np.ndarray, box: np.ndarray, band: float) -> dict[str, np.ndarray]:
    """Boolean (h, w) masks of the four regions in a box (x0, y0, x1, y1) of a frame whose
    (68, 2) landmarks are ``lms``; the SSIM window's radius at the box's border is left out."""
    h, w = int(box[3] - box[1]), int(box[2] - box[0])
    pts = lms - box[:2]
    lips = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(lips, cv2.convexHull(np.round(pts[48:68]).astype(np.int32)), 1)
    iod = np.linalg.norm(lms[36:42].mean(0) - lms[42:48].mean(0))
    k = max(3, int(LIPS_DILATE * iod) | 1)
    lips = cv2.dilate(lips, np.ones((k, k), np.uint8)) > 0
    poly = np.zeros((h, w), np.uint8)
    cv2.fillPoly(poly, [np.round(pts[list(JAW_POLYGON)]).astype(np.int32)], 1)
    contour = cv2.morphologyEx(poly, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    near = cv2.distanceTransform(1 - contour, cv2.DIST_L2, 3) < band
    valid = np.zeros((h, w), bool)
    r = SSIM_RADIUS
    valid[r:-r, r:-r] = True
    rest = valid & ~lips
    return {
        "lips": valid & lips,
        "edge": rest & near,
        "inside": rest & ~near & (poly > 0),
        "outside": rest & ~near & (poly == 0),
    }


def split_scores(
    clips: dict[str, np.ndarray], truth: np.ndarray, lms: np.ndarray, band: float
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, np.ndarray]]:
    """Per clip, the mean SSIM of each region over the frames (and of the box); the regions'
    mean share of the box; per clip, the mean SSIM map resized to a FIGURE_SIZE square."""
    boxes = region_boxes(lms, truth[0].shape)
    if boxes is None:
        raise ValueError("no face found in any frame")
    scores = {c: {r: [] for r in (*REGIONS, "box")} for c in clips}
    shares = {r: [] for r in REGIONS}
    maps = {c: np.zeros((FIGURE_SIZE, FIGURE_SIZE)) for c in clips}
    for t in range(len(truth)):
        masks = region_masks(lms[t], boxes[t], band)
        valid = sum(masks.values())
        for r in REGIONS:
            shares[r].append(masks[r].sum() / valid.sum())
        g = crop(truth[t], boxes[t])
        for c, frames in clips.items():
            m = ssim_map(crop(frames[t], boxes[t]), g)
            for r in REGIONS:
                scores[c][r].append(m[masks[r]].mean() if masks[r].any() else np.nan)
            scores[c]["box"].append(m[valid > 0].mean())
            maps[c] += cv2.resize(m, (FIGURE_SIZE, FIGURE_SIZE), interpolation=cv2.INTER_AREA)
    means = {c: {r: float(np.nanmean(v)) for r, v in s.items()} for c, s in scores.items()}
    return (
        means,
        {r: float(np.mean(v)) for r, v in shares.items()},
        {c: m / len(truth) for c, m in maps.items()},
    )


def write_figure(path: Path, maps: dict[str, np.ndarray]) -> None:
    """The mean maps side by side (white = 1) and the first stage's lead over the render x 4."""
    render, ceiling = maps["render"], maps["first stage only"]
    tiles = [np.clip(render, 0, 1), np.clip(ceiling, 0, 1), np.clip(4 * (ceiling - render), 0, 1)]
    img = (np.concatenate(tiles, 1) * 255).astype(np.uint8)
    cv2.imwrite(str(path), cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST))
    logger.info("wrote %s", path)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a `sh demo.sh` output folder")
    ap.add_argument("--test", type=Path, required=True, help="its held-out clip (the truth)")
    ap.add_argument("--every", type=int, default=3, help="score every n-th frame")
    ap.add_argument("--band", type=float, default=8.0, help="edge band width, px of the frame")
    ap.add_argument("--figure", type=Path, help="write the mean maps here (png)")
    args = ap.parse_args()
    truth = read_clip(args.test)
    clips = {
        "render": read_clip(args.run / "result.mp4"),
        "first stage only": read_clip(args.run / "first_stage_only.mp4"),
    }
    n = min(len(truth), *(len(c) for c in clips.values()))
    truth = truth[: n : args.every]
    clips = {k: v[: n : args.every] for k, v in clips.items()}
    lms = make_landmarker("dlib").track(iter(truth))
    try:
        means, shares, maps = split_scores(clips, truth, lms, args.band)
    except ValueError as exc:
        raise SystemExit(f"{args.test}: {exc}") from exc
    lines = [
        "| region | share of the box | render | first stage only | gap |",
        "|---|---|---|---|---|",
    ]
    for r in (*REGIONS, "box"):
        share = f"{shares[r]:.0%}" if r in shares else "100%"
        a, b = means["render"][r], means["first stage only"][r]
        lines.append(f"| {r} | {share} | {a:.3f} | {b:.3f} | {b - a:.3f} |")
    logger.info("%s", "\n".join(lines))
    if args.figure:
        write_figure(args.figure, maps)


if __name__ == "__main__":
    main()
