"""Training-only latent augmentation of the demo recipe (ldm/models/diffusion/augment.py)."""

from __future__ import annotations

import torch

from ldm.models.diffusion.augment import jitter_appearance, jitter_corners


def test_window_jitter_moves_corners_within_the_bound_and_the_latent():
    torch.manual_seed(0)
    corners = torch.tensor([[6, 6], [0, 0], [12, 12]]).repeat(200, 1)
    moved = jitter_corners(corners, 3, limit=12)
    shift = moved - corners
    assert moved.min() >= 0 and moved.max() <= 12  # windows stay inside the latent
    free = corners[:, 0] == 6  # away from the borders: every shift in [-3, 3] occurs
    assert set(shift[free].flatten().tolist()) == set(range(-3, 4))
    assert (moved[corners[:, 0] == 0] >= 0).all() and shift[corners[:, 0] == 0].min() >= 0


def test_appearance_jitter_is_one_affine_map_per_sample_on_target_and_condition_latents():
    torch.manual_seed(0)
    z = torch.randn(4, 3, 8, 8)
    cond = {
        "masked_latent": torch.randn(4, 3, 8, 8),
        "reference_latent": z.clone(),  # the same latent as the target
        "audio_feature": torch.randn(4, 64),
    }
    z2, cond2 = jitter_appearance(z, cond, 0.2)
    assert torch.equal(cond2["audio_feature"], cond["audio_feature"])  # features untouched
    assert torch.allclose(z2, cond2["reference_latent"])  # same map on target and reference
    # per sample and channel the map is affine (z2 = a z + b, a and b constant over pixels),
    # the same on the target and on the masked latent, and not the identity
    maps = [fit_affine(z, z2), fit_affine(cond["masked_latent"], cond2["masked_latent"])]
    pairs = ((z, z2), (cond["masked_latent"], cond2["masked_latent"]))
    for (a, b), (x, y) in zip(maps, pairs, strict=True):
        assert torch.allclose(a[..., None] * x.flatten(2) + b[..., None], y.flatten(2), atol=1e-5)
    assert torch.allclose(maps[0][0], maps[1][0]) and torch.allclose(maps[0][1], maps[1][1])
    assert (maps[0][0] - 1).abs().max() > 0.05 and maps[0][1].abs().max() > 0.05


def fit_affine(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares a, b (B, C) with y = a x + b over the pixels of each sample and channel."""
    xs, ys = x.flatten(2), y.flatten(2)
    xc, yc = xs - xs.mean(-1, keepdim=True), ys - ys.mean(-1, keepdim=True)
    a = (xc * yc).sum(-1) / (xc**2).sum(-1)
    return a, ys.mean(-1) - a * xs.mean(-1)
