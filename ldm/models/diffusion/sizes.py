"""Construction-time size checks of LatentDiffusion: the sub-configs must fit together."""

from __future__ import annotations

from torch import nn

UNET = "model.params.unet_config.params"
P = "model.params"


def size_mismatches(
    unet: nn.Module,  # UNetModel
    first_stage: nn.Module,  # VQModelInterface | AutoencoderKL (embed_dim = latent channels)
    audio: nn.Module,  # AudioNet, or the MouthPredictor in its place (model.params.mouth_config)
    audio_attention: nn.Module | None,  # AudioAttNet (None with a MouthPredictor)
    landmarks: nn.Module,  # LdmNet
    channels: int,  # model.params.channels
    sketch_channels: int = 0,  # model.params.mouth_sketch: 20 mouth heatmaps (else 0)
) -> list[str]:
    """Every size of one sub-config that another does not match, named by its config keys."""
    latent = first_stage.embed_dim
    if audio_attention is None:  # the mouth code's embedding is the audio feature
        width, key = audio.dim_out, f"{P}.mouth_config.params.dim_out"
    else:
        width, key = audio.dim_aud, f"{P}.audio_config.params.dim_aud"
    context = width + landmarks.dim_out  # one token [audio ‖ landmarks] (SPEC 4.3)
    checks = [
        (
            unet.context_dim == context,
            f"{UNET}.context_dim = {unet.context_dim}, but {key} ({width}) + "
            f"{P}.landmark_config.params.dim_out ({landmarks.dim_out}) = {context}",
        ),
        (
            unet.in_channels == 3 * latent + sketch_channels,
            f"{UNET}.in_channels = {unet.in_channels}, but [noisy, masked, reference] latents "
            f"are 3 x {P}.first_stage_config.params.embed_dim ({latent}) = {3 * latent}"
            + (f", plus {sketch_channels} for {P}.mouth_sketch" if sketch_channels else ""),
        ),
        (
            unet.out_channels == latent,
            f"{UNET}.out_channels = {unet.out_channels}, but the latent has "
            f"{P}.first_stage_config.params.embed_dim = {latent} channels",
        ),
        (
            channels == latent,
            f"{P}.channels = {channels}, but {P}.first_stage_config.params.embed_dim = {latent}",
        ),
    ]
    if audio_attention is not None:
        checks.append(
            (
                audio_attention.dim_aud <= audio.dim_aud,
                f"{P}.audio_attention_config.params.dim_aud = {audio_attention.dim_aud} exceeds "
                f"{P}.audio_config.params.dim_aud = {audio.dim_aud} (it reads the first channels)",
            )
        )
    return [message for ok, message in checks if not ok]


def check_sizes(*modules: nn.Module | None, channels: int, sketch_channels: int = 0) -> None:
    """Raise one ValueError listing every mismatch of ``size_mismatches``."""
    problems = size_mismatches(*modules, channels=channels, sketch_channels=sketch_channels)
    if problems:
        raise ValueError("model config sizes do not fit together:\n- " + "\n- ".join(problems))
