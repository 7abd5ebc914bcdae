"""Write an evaluation as JSON, a markdown table and one PNG plot per clip."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np

from ldm.data.layout import FPS
from ldm.evaluation.evaluate import (
    BASELINES,
    FOLLOWS_SPEECH_CORR,
    PREDICTION,
    ClipResult,
    summarize_overall,
    summarize_row,
)
from ldm.evaluation.metrics import psnr_from_mse

log = logging.getLogger(__name__)

# (summary key, column header, number format); "LPIPS"/"LSE" columns appear only when computed
COLUMNS = (
    ("psnr", "PSNR ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.4f}"),
    ("psnr_mouth", "mouth PSNR ↑", "{:.2f}"),
    ("ssim_mouth", "mouth SSIM ↑", "{:.4f}"),
    ("sharpness_mouth", "mouth sharpness (1 = truth)", "{:.3f}"),
    ("gmsd_mouth", "mouth GMSD ↓", "{:.4f}"),
    ("lmd", "LMD px ↓", "{:.2f}"),
    ("lmd_iod", "LMD/IOD ↓", "{:.4f}"),
    ("mouth_corr", "mouth-open corr ↑", "{:.3f}"),
    ("opening_mae", "open err ↓", "{:.4f}"),
    ("lpips", "LPIPS ↓", "{:.4f}"),
    ("lse_d", "LSE-D ↓", "{:.3f}"),
    ("lse_c", "LSE-C ↑", "{:.3f}"),
)
DEFINITIONS = (
    "PSNR: 8-bit, from the mean per-frame MSE of the clip (inf = identical frames).",
    "SSIM: Gaussian window 11x11, sigma 1.5 (Wang et al. 2004), mean over RGB channels and frames.",
    "mouth PSNR/SSIM: the same inside the truth's lower-face box per frame (iBUG-68 points 2-14 "
    "and 48-67, 10% margin).",
    "mouth sharpness: in the same box, the luma (BT.601, float) of method and truth is band-passed "
    "as GaussianBlur(sigma 1) - GaussianBlur(sigma 3); its mean squared value is each frame's "
    "energy, and the score is the method's mean energy over frames divided by the truth's "
    "(frame-pooled, not a mean of ratios). 1 = as sharp as the truth, < 1 blurrier, > 1 noisier. "
    "PSNR rewards blur (a smeared mouth can out-score the baselines on mouth PSNR); this does not.",
    "mouth GMSD: in the same box, gradient magnitude similarity deviation (Xue et al. 2014): "
    "Prewitt gradient magnitudes m of both lumas, the per-pixel similarity (2 m m' + 170) / "
    "(m^2 + m'^2 + 170), and its standard deviation over the box, averaged over frames. 0 = the "
    "truth's edges; blur and noise both raise it, so, unlike sharpness, added detail that is not "
    "the truth's cannot improve it.",
    "LMD: mean distance of the 20 mouth landmarks (48-67) in truth pixels, after a similarity "
    "fit of the prediction's points 17-47 onto the truth's; LMD/IOD divides by the truth's "
    "outer-eye-corner distance.",
    "mouth-open corr: Pearson correlation over time of the inner-lip gap (61-67, 62-66, 63-65, "
    "along the face's vertical axis, divided by the inter-ocular distance) with the truth's; "
    "n/a = undefined (a constant series). open err: mean absolute gap difference, same units.",
    "Frames without a detected face are left out of the landmark metrics and counted in 'no face'.",
    "Baselines: 'copy reference frame' repeats the truth's first frame (DiffTalk's reference) "
    "and has no lip motion; 'copy reference frame, pose-aligned' warps that frame onto each "
    "frame's head pose (the similarity mapping its nose and eye landmarks, iBUG 27-47, onto the "
    "frame's; its landmarks are the first frame's moved alike, so its LMD equals the plain "
    "copy's: LMD aligns the faces itself), a still reference where the truth's face is; "
    "'truth shifted' is the truth moved circularly in time, the image "
    "and landmark counterpart of 'ground truth with audio shifted by 1 s' (right person, wrong "
    "timing; for LSE it pairs those frames with the unshifted audio); 'truth itself' is the "
    "upper bound.",
    "'first stage only' (when given): the truth encoded and decoded by the first-stage "
    "autoencoder and pasted back into the frame like the prediction: the best a renderer "
    "can do through that autoencoder.",
    f"'does not follow the speech': a method (not a baseline) whose mouth-open corr is below "
    f"{FOLLOWS_SPEECH_CORR:g}, or undefined while the truth's mouth moves (a still mouth, or no "
    "face found), whatever its LMD and PSNR say: a blurred or still mouth can score well on "
    "both. report.json: follows_speech true/false (null: the truth's mouth does not move).",
)
NOT_FOLLOWING = "does not follow the speech"


def _fmt(value: float | None, spec: str) -> str:
    """A table cell: 'inf', 'n/a' for NaN/None, otherwise the formatted number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return spec.format(value)


def _columns(clips: list[ClipResult]) -> list[tuple[str, str, str]]:
    """The columns with data: LPIPS and LSE only when computed for some row."""
    have = {k for c in clips for r in c.rows for k in (*r.per_frame, *r.scores)}
    return [col for col in COLUMNS if col[0] not in ("lpips", "lse_d", "lse_c") or col[0] in have]


def verdict(label: str, summary: dict) -> str:
    """A method cell: the row's label, marked when it does not follow the speech."""
    return f"{label} **({NOT_FOLLOWING})**" if summary.get("follows_speech") is False else label


def verdict_line(summaries: list[dict]) -> list[str]:
    """The line under a table that has marked rows (none otherwise)."""
    n = sum(s.get("follows_speech") is False for s in summaries)
    if not n:
        return []
    return [
        "",
        f"**{n} row(s) {NOT_FOLLOWING}**: mouth-open corr below {FOLLOWS_SPEECH_CORR:g} (or "
        "undefined: a still mouth, or no face), whatever their LMD and PSNR say.",
    ]


def markdown_tables(clips: list[ClipResult]) -> tuple[str, str]:
    """(per-clip table, overall table) in GitHub markdown; methods whose mouth does not follow
    the speech are marked, with a line under the table."""
    cols = _columns(clips)
    head = "| clip | method | " + " | ".join(c[1] for c in cols) + " | frames | no face |"
    rule = "|" + "---|" * (len(cols) + 4)
    lines, sums = [head, rule], []
    for c in clips:
        for r in c.rows:
            s = summarize_row(r, c.gt_opening)
            sums.append(s)
            cells = [_fmt(s.get(k), f) for k, _, f in cols]
            tail = f" | {c.n_frames} | {r.n_noface}/{c.n_noface_gt} |"
            lines.append(f"| {c.name} | {verdict(r.label, s)} | " + " | ".join(cells) + tail)
    overall = summarize_overall(clips)
    n = sum(c.n_frames for c in clips)
    o_lines = [head.replace("| clip ", "| clips "), rule]
    labels = {r.key: r.label for c in clips for r in c.rows}
    for key, s in overall.items():
        cells = [_fmt(s.get(k), f) for k, _, f in cols]
        nf = sum(r.n_noface for c in clips for r in c.rows if r.key == key)
        gf = sum(c.n_noface_gt for c in clips)
        o_lines.append(
            f"| {len(clips)} | {verdict(labels[key], s)} | "
            + " | ".join(cells)
            + f" | {n} | {nf}/{gf} |"
        )
    lines += verdict_line(sums)
    o_lines += verdict_line(list(overall.values()))
    return "\n".join(lines), "\n".join(o_lines)


def markdown_report(clips: list[ClipResult], notes: list[str]) -> str:
    """The whole markdown document: tables, notes (skips, truncation) and metric definitions."""
    per_clip, overall = markdown_tables(clips)
    all_notes = list(notes) + [f"{c.name}: {n}" for c in clips for n in c.notes]
    parts = ["# Evaluation report", ""]
    parts += [f"- {c.name}: prediction `{c.pred_path}` vs truth `{c.gt_path}`" for c in clips]
    parts += ["", "## Per clip", "", per_clip, ""]
    parts += ["'no face' = frames without a detected face, method/truth.", ""]
    parts += ["## Overall", "", overall, ""]
    if all_notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in all_notes] + [""]
    parts += ["## Definitions", ""] + [f"- {d}" for d in DEFINITIONS] + [""]
    for c in clips:
        if c.plot_path:
            parts.append(f"![{c.name}]({Path(c.plot_path).name})")
    return "\n".join(parts) + "\n"


def _jsonable(x):
    """Arrays to lists; NaN to null and +-inf to the strings 'inf'/'-inf' (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray | np.generic):
        x = x.tolist()
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def report_dict(clips: list[ClipResult], settings: dict, notes: list[str]) -> dict:
    """Everything as one JSON-ready dict: settings, notes, per clip rows, overall."""
    out_clips = []
    for c in clips:
        rows = {
            r.key: {
                "label": r.label,
                "summary": summarize_row(r, c.gt_opening),
                "no_face_frames": r.n_noface,
                "per_frame": {
                    **r.per_frame,
                    "psnr": psnr_from_mse(r.per_frame["mse"]),
                    "psnr_mouth": psnr_from_mse(r.per_frame["mse_mouth"]),
                },
            }
            for r in c.rows
        }
        out_clips.append(
            {"name": c.name, "pred": c.pred_path, "truth": c.gt_path, "frames": c.n_frames,
             "truth_no_face_frames": c.n_noface_gt, "truth_mouth_opening": c.gt_opening,
             "notes": c.notes, "plot": c.plot_path, "rows": rows}
        )  # fmt: skip
    return _jsonable(
        {"settings": settings, "notes": notes, "definitions": list(DEFINITIONS),
         "clips": out_clips, "overall": summarize_overall(clips)}
    )  # fmt: skip


def safe_name(name: str) -> str:
    """A file-name-safe version of a clip name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "clip"


def plot_clip(clip: ClipResult, path: Path, fps: float = FPS) -> Path:
    """PNG: mouth opening per frame (methods vs truth) above per-frame PSNR (whole and mouth).

    The prediction is a thick line, other methods (e.g. first stage only) thin, baselines dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(clip.n_frames) / fps
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12.5, 6.5), sharex=True)
    ax1.plot(t, clip.gt_opening, color="black", lw=2.2, label="truth")
    for i, r in enumerate(clip.rows):
        if r.key == "truth":
            continue
        lw, ls = 1.6 if r.key == PREDICTION else 1.0, "--" if r.key in BASELINES else "-"
        style = {"color": f"C{i}", "lw": lw, "ls": ls}
        label = r.label
        if summarize_row(r, clip.gt_opening).get("follows_speech") is False:
            label = f"{r.label} ({NOT_FOLLOWING})"
        ax1.plot(t, r.per_frame["opening"], label=label, **style)
        whole = psnr_from_mse(r.per_frame["mse"])
        mouth = psnr_from_mse(r.per_frame["mse_mouth"])
        ax2.plot(t, np.where(np.isinf(whole), np.nan, whole), label=f"{r.label}: frame", **style)
        style.update(ls=":", lw=style["lw"] * 1.3)
        ax2.plot(t, np.where(np.isinf(mouth), np.nan, mouth), label=f"{r.label}: mouth", **style)
    ax1.set_ylabel("mouth opening\n(inner-lip gap / IOD)")
    ax1.set_title(f"{clip.name}: mouth opening and per-frame PSNR")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax2.set_ylabel("PSNR (dB)")
    ax2.set_xlabel("time (s)")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if all(np.all(r.per_frame["mse"] == 0) for r in clip.rows if r.key == PREDICTION):
        ax2.text(0.02, 0.9, "prediction PSNR = inf (identical frames)", transform=ax2.transAxes)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    clips: list[ClipResult], out_dir: str | Path, settings: dict, notes: list[str]
) -> dict[str, Path]:
    """Write report.json, report.md and <clip>.png into out_dir; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for c in clips:
        c.plot_path = str(plot_clip(c, out / f"{safe_name(c.name)}.png", settings.get("fps", FPS)))
        plots[c.name] = Path(c.plot_path)
    md = out / "report.md"
    md.write_text(markdown_report(clips, notes), encoding="utf-8")
    js = out / "report.json"
    js.write_text(json.dumps(report_dict(clips, settings, notes), indent=1, allow_nan=False))
    log.info("report written: %s, %s, %d plot(s)", js, md, len(plots))
    return {"json": js, "markdown": md, **{f"plot:{k}": v for k, v in plots.items()}}
