"""Landmark geometry: the stable points of a face, similarity transforms between point sets, and
mouth shapes coded in a template face's frame.

Shared by the dataset (mouth-matched references), the MouthPredictor and the reference alignment,
so it imports nothing of the package but the landmark layout. Points are (x, y) pixels.
"""

from __future__ import annotations

import torch

from ldm.data.layout import EYES, MOUTH, NOSE, upper_face_index

# the nose and the eyes within the 39 upper-face landmarks of a batch
STABLE_POINTS = tuple(upper_face_index(i) for i in (*NOSE, *EYES))
# the eyes and the nose bridge, down to its tip: above the rows any mask hides (from landmark 30)
COLOUR_POINTS = tuple(upper_face_index(i) for i in (*NOSE[:4], *EYES))
N_MOUTH = len(MOUTH)


def similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) least-squares similarity transforms mapping src (B, N, 2) onto dst (Umeyama)."""
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - mu_s, dst - mu_d
    cov = d.transpose(1, 2) @ s / src.shape[1]  # (B, 2, 2)
    u, sig, vh = torch.linalg.svd(cov)
    sign = torch.ones_like(sig)
    sign[:, 1] = torch.sign(torch.linalg.det(u @ vh))  # no reflections
    rot = u @ torch.diag_embed(sign) @ vh
    scale = (sig * sign).sum(1) / s.pow(2).sum((1, 2)).div(src.shape[1])
    a = scale[:, None, None] * rot
    t = mu_d.transpose(1, 2) - a @ mu_s.transpose(1, 2)  # (B, 2, 1)
    return torch.cat([a, t], dim=2)


def invert_affine(a: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine transforms -> their inverses (B, 2, 3)."""
    lin_inv = torch.linalg.inv(a[:, :, :2])
    return torch.cat([lin_inv, -lin_inv @ a[:, :, 2:]], dim=2)


def affine(points: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) points mapped by (B, 2, 3) affine transforms."""
    return points @ a[:, :, :2].transpose(1, 2) + a[:, None, :, 2]


def shape_template(upper: torch.Tensor) -> torch.Tensor:
    """(N, 39, 2) upper-face landmarks -> (21, 2) mean nose-and-eyes shape (centred, unit size)."""
    pts = upper[:, list(STABLE_POINTS)].double()
    pts = pts - pts.mean(1, keepdim=True)
    return (pts / pts.pow(2).sum(-1).mean(-1).sqrt()[:, None, None]).mean(0)


def to_template(upper: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) similarities taking each frame's nose and eyes onto ``template``."""
    src = upper[:, list(STABLE_POINTS)].double()
    return similarity(src, template.double().expand(len(src), -1, -1))


def mouth_code(mouth: torch.Tensor, upper: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """(B, 20, 2) mouth landmarks in pixels -> (B, 40) shape code in the template's frame."""
    return affine(mouth.double(), to_template(upper, template)).flatten(1).float()


def mouth_points(code: torch.Tensor, upper: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """Inverse of ``mouth_code``: (B, 40) -> (B, 20, 2) pixels on each frame's own face."""
    inverse = invert_affine(to_template(upper, template))
    return affine(code.double().view(-1, N_MOUTH, 2), inverse).float()
