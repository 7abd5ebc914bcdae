"""Pose-aligned references: warp each reference frame onto its target frame's head pose.

DiffTalk concatenates the reference frame's latent with the target's as it is; when the head has
moved between the two, the reference's mouth sits elsewhere and a small UNet has to learn the
shift before it can borrow teeth and lips from it. With ``align_reference`` the reference image
is first warped by the similarity transform (scale, rotation, shift) that maps its upper-face
landmarks onto the target's (eyes and nose: known in both, never the mouth), so the reference's
lower face lands where the target's will be (the fit: ``similarity`` in ldm/geometry.py). Done
in torch on the batch, so training and rendering share it on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm.geometry import COLOUR_POINTS, STABLE_POINTS, invert_affine, similarity


def align_references(
    reference: torch.Tensor, ref_landmarks: torch.Tensor, landmarks: torch.Tensor
) -> torch.Tensor:
    """Warp references (B, 3, H, W) so their stable landmarks (B, 39, 2, pixels) land on the
    targets' ``landmarks``; borders repeat the edge pixels."""
    idx = list(STABLE_POINTS)
    forward = similarity(ref_landmarks[:, idx].double(), landmarks[:, idx].double())
    inverse = invert_affine(forward)  # target pixel -> reference pixel
    bottom = inverse.new_tensor([[0.0, 0.0, 1.0]]).expand(len(inverse), 1, 3)
    h, w = reference.shape[-2:]
    # affine_grid works in [-1, 1] coordinates (align_corners=False): x_n = (2 x + 1) / W - 1
    to_px = inverse.new_tensor([[w / 2, 0, w / 2 - 0.5], [0, h / 2, h / 2 - 0.5], [0, 0, 1]])
    to_norm = torch.linalg.inv(to_px)
    theta = (to_norm[:2] @ torch.cat([inverse, bottom], 1) @ to_px).float()
    grid = F.affine_grid(theta, list(reference.shape), align_corners=False)
    return F.grid_sample(reference, grid.to(reference), padding_mode="border", align_corners=False)


def match_colours(
    reference: torch.Tensor, target: torch.Tensor, landmarks: torch.Tensor
) -> torch.Tensor:
    """Map each aligned reference's colours (B, 3, H, W) onto its target's, per channel: mean and
    spread inside the box of the target's eyes and nose bridge (visible in the masked target, and,
    after alignment, the same face region of the reference). Clips filmed apart differ in light
    and white balance; the UNet learns to copy the reference's mouth from same-clip pairs, so
    without this it would paste another light's lips into the frame."""
    pts = landmarks[:, list(COLOUR_POINTS)]
    h, w = reference.shape[-2:]
    lo = pts.amin(1).floor().long()
    hi = pts.amax(1).ceil().long()
    ys = torch.arange(h, device=reference.device)[None, :, None]
    xs = torch.arange(w, device=reference.device)[None, None, :]
    box = (ys >= lo[:, 1, None, None]) & (ys < hi[:, 1, None, None])
    box = (box & (xs >= lo[:, 0, None, None]) & (xs < hi[:, 0, None, None]))[:, None].to(reference)
    n = box.sum((2, 3), keepdim=True).clamp_min(1.0)

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = (x * box).sum((2, 3), keepdim=True) / n
        var = ((x - mean) ** 2 * box).sum((2, 3), keepdim=True) / n
        return mean, var.sqrt().clamp_min(1e-3)

    (mu_r, sd_r), (mu_t, sd_t) = stats(reference), stats(target)
    return ((reference - mu_r) / sd_r * sd_t + mu_t).clamp(-1.0, 1.0)
