"""The Gradio Blocks page: portrait + speech + sampling options in, mp4 (+ evaluation plot) out."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from ldm.app.studio import InputError, RenderRequest, Studio
from ldm.inference.identity import TRAIN_HINT
from ldm.inference.render import (
    CLIP_REFERENCE_MODES,
    PORTRAIT_ETA,
    PORTRAIT_SAMPLER,
    PORTRAIT_STEPS,
    SAMPLERS,
)

TITLE = "DiffTalk: drive a portrait with speech"
INTRO = (
    f"# {TITLE}\n"
    "Upload a portrait **video** or **photo** and a speech file (or record one), press "
    "**Render**. Leave the speech empty to let a portrait video drive itself: the result is then "
    "scored against the video. Everything runs on this machine."
)
MAX_STEPS = 250
VIDEO_HEIGHT = 360  # px of the portrait and result players
CACHE_LIFETIME = (3600, 86400)  # every hour, drop Gradio's cached copies older than a day
MAX_UPLOAD = "500mb"
ETA_HELP = "noise added at each step: 0 deterministic, 1 a new noise each step (DDIM: ancestral)"
REFERENCE_HELP = (
    "first: the portrait's first frame for every frame; progressive: the previous one; bank: per "
    "frame, the training frame whose mouth matches the speech (models trained with one)"
)


def eta_for(sampler: str) -> float:
    """The page's eta for a sampler: 1 for DDIM (as the demo renders), 0 for DPM-Solver++."""
    return PORTRAIT_ETA[sampler]


def optional_path(value: str | None) -> Path | None:
    """A Gradio file value as a Path (None when the box is empty)."""
    return Path(value) if value else None


def identity_note(warning: str) -> Any:
    """The identity warning shown beside the result (hidden when there is none)."""
    if not warning:
        return gr.update(value="", visible=False)
    text = html.escape(warning[0].upper() + warning[1:])
    text = text.replace(html.escape(TRAIN_HINT), f"`{TRAIN_HINT}`")  # the command, as code
    return gr.update(value=f"**Warning: not a face this model knows.** {text}", visible=True)


def run_render(studio: Studio, inputs: tuple, progress: gr.Progress) -> tuple[Any, ...]:
    """Render one request: (player, identity warning, download, done line, report, plot)
    values, or a gr.Error whose message the page shows."""
    video, image, audio, sampler, steps, eta, reference, shared_noise, seed = inputs
    req = RenderRequest(
        video=optional_path(video),
        image=optional_path(image),
        audio=optional_path(audio),
        sampler=sampler,
        steps=int(steps),
        eta=float(eta),
        reference=reference,
        shared_noise=bool(shared_noise),
        seed=int(seed or 0),
    )
    try:
        result = studio.render(req, lambda desc, fraction: progress(fraction, desc=desc))
    except InputError as exc:
        raise gr.Error(html.escape(str(exc)), duration=None, print_exception=False) from exc
    done = f"Rendered {result.n_frames} frames in {result.seconds:.1f} s: `{result.video.name}`"
    notes = "".join(f"\n- {note}" for note in result.notes)
    report = f"### The result against the portrait video\n\n{result.summary}\n{notes}"
    if not (result.summary or notes):
        report = ""
    plot = result.plot
    return (
        str(result.video),
        identity_note(result.identity_warning),
        str(result.video),
        done,
        report,
        gr.update(value=str(plot) if plot else None, visible=plot is not None),
    )


def input_column(studio: Studio) -> tuple[list[gr.components.Component], gr.Button]:
    """Portrait tabs, speech box, sampling options and the render button; the options start
    on the demo's render (DDIM 20, eta 1, shared noise, and bank references for a model with a
    reference bank)."""
    bank = studio.bank is not None
    with gr.Tabs():
        with gr.Tab("Portrait video"):
            video = gr.Video(
                sources=["upload"],
                label="Portrait video",
                height=VIDEO_HEIGHT,
                elem_id="portrait-video",
            )
        with gr.Tab("Portrait photo"):
            image = gr.Image(
                type="filepath",
                image_mode=None,  # keep the upload as it is (no re-encoding)
                sources=["upload"],
                label="Portrait photo",
                height=VIDEO_HEIGHT,
                elem_id="portrait-image",
            )
    audio = gr.Audio(
        sources=["upload", "microphone"],
        type="filepath",
        buttons=["download"],
        label="Driving speech (empty: a portrait video drives itself)",
        elem_id="speech",
    )
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            sampler = gr.Radio(list(SAMPLERS), value=PORTRAIT_SAMPLER, label="Sampler")
            modes = [*CLIP_REFERENCE_MODES, *(["bank"] if bank else [])]
            reference = gr.Radio(
                modes, value="bank" if bank else "first", label="Reference", info=REFERENCE_HELP
            )
        with gr.Row():
            steps = gr.Slider(
                1, MAX_STEPS, value=PORTRAIT_STEPS, step=1, label="Steps", elem_id="steps"
            )
            eta = gr.Slider(
                0.0, 1.0, value=eta_for(PORTRAIT_SAMPLER), step=0.1, label="Eta", info=ETA_HELP,
                elem_id="eta",
            )  # fmt: skip
        with gr.Row():
            shared = gr.Checkbox(True, label="Shared noise (one initial noise for all frames)")
            seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
    sampler.change(eta_for, sampler, eta)
    video.upload(lambda: None, None, image)  # one portrait at a time
    image.upload(lambda: None, None, video)
    button = gr.Button("Render", variant="primary", elem_id="render")
    return [video, image, audio, sampler, steps, eta, reference, shared, seed], button


def output_column() -> list[gr.components.Component]:
    """Result player, the identity warning (when the model does not know the face), download
    link and a one-line summary."""
    result = gr.Video(
        label="Result",
        interactive=False,
        height=VIDEO_HEIGHT,
        buttons=["download"],
        elem_id="result",
    )
    warning = gr.Markdown(visible=False, elem_id="identity-warning")
    download = gr.File(label="Download the mp4", interactive=False, elem_id="download")
    done = gr.Markdown(elem_id="done")
    return [result, warning, download, done]


def evaluation_rows() -> list[gr.components.Component]:
    """Metrics table and plot, filled when a portrait video drove itself."""
    report = gr.Markdown(elem_id="report")
    plot = gr.Image(
        label="Evaluation: mouth opening and per-frame PSNR",
        type="filepath",
        interactive=False,
        visible=False,
        buttons=["download", "fullscreen"],
        elem_id="plot",
    )
    return [report, plot]


def build_ui(studio: Studio) -> gr.Blocks:
    """The page around ``studio`` (whose model is loaded, or whose status says how to get one)."""
    with gr.Blocks(title="DiffTalk", analytics_enabled=False, delete_cache=CACHE_LIFETIME) as page:
        gr.Markdown(INTRO)
        gr.Markdown(studio.status, elem_id="status")
        with gr.Row():
            with gr.Column():
                inputs, button = input_column(studio)
            with gr.Column():
                outputs = output_column()
        outputs += evaluation_rows()

        def render(
            video: str | None,
            image: str | None,
            audio: str | None,
            sampler: str,
            steps: float,
            eta: float,
            reference: str,
            shared_noise: bool,
            seed: float | None,
            progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's API)
        ) -> tuple:
            """The button's handler: Gradio finds the progress tracker by its default value."""
            args = (video, image, audio, sampler, steps, eta, reference, shared_noise, seed)
            return run_render(studio, args, progress)

        button.click(render, inputs, outputs, concurrency_limit=1)
    return page


def serve(page: gr.Blocks, port: int, outdir: Path) -> None:
    """Serve the page on 127.0.0.1:port until interrupted: no share link, no SSR, no API footer;
    results in ``outdir`` may be downloaded."""
    page.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1",
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        mcp_server=False,
        footer_links=[],
        allowed_paths=[str(outdir)],
        max_file_size=MAX_UPLOAD,
    )
