"""MouthPredictor: the mouth's shape from the audio, by ridge regression (demo recipe; off by
default, the original has no such condition).

On one speaker's minute of footage the UNet learns each training frame's lower face from its
upper face and hardly uses the audio (docs/demo-recipe.md). With ``mouth_config`` the audio
feature of the context token is replaced by an embedding of the 20 mouth landmarks' shape: the
target's own in training, so the UNet learns to draw the mouth those points describe, and at
sampling time the shape predicted from the audio windows, so the audio decides the mouth
(AudioNet and AudioAttNet are then not built). A ridge regression is what a few hundred frames
support: on the dev speaker, it predicts the held-out clip's mouth opening with a correlation of
0.52 (log-mel) to 0.62 (Whisper features) where jointly trained networks reach about 0.1.

A shape is coded as the mouth points mapped by the similarity (scale, rotation, shift) that takes
the frame's nose and eyes onto a template face (their mean shape over the training frames), so
head position, size and roll drop out; the code maps back onto each frame's own nose and eyes
(``mouth_code`` and ``mouth_points`` in ldm/geometry.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ldm.data.layout import FEATURE_DIM
from ldm.geometry import N_MOUTH, STABLE_POINTS, mouth_code, mouth_points, shape_template
from ldm.util import load_state_dict_file

logger = logging.getLogger(__name__)

SKETCH_SIGMA = 1.0  # latent cells (4 px of a 128 px frame at f4)


def mouth_heatmaps(
    points: torch.Tensor, frame_size: int, latent_size: int, sigma: float = SKETCH_SIGMA
) -> torch.Tensor:
    """(B, 20, 2) mouth points in pixels of the frame -> (B, 20, h, w) heatmaps on the latent
    grid: channel i a Gaussian of ``sigma`` cells with its peak of 1 at point i."""
    cells = points.float() * (latent_size / frame_size) - 0.5  # cell i spans pixels [4i, 4i+4)
    grid = torch.arange(latent_size, dtype=torch.float32, device=points.device)
    dx = grid[None, None, None, :] - cells[..., 0, None, None]
    dy = grid[None, None, :, None] - cells[..., 1, None, None]
    return torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))


class MouthPredictor(nn.Module):
    """Ridge regression from smoothed audio windows (B, 8, 16, D) to a mouth shape code (B, 40).

    It reads the window of the frame itself (index ``centre`` of the 8) when fitting, and
    averages its predictions over the windows of the ``smooth`` frames either side when
    predicting, so the mouth does not flicker from one frame to the next. It is
    fitted once in closed form on the training frames (``fit``; LatentDiffusion does it when
    training starts) and kept in buffers, so checkpoints carry it and DDP ranks agree. The
    defaults are the demo recipe's (configs/latent-diffusion/talking-demo.yaml).
    """

    def __init__(
        self,
        feature_dim: int = FEATURE_DIM,
        win_size: int = 16,
        centre: int = 4,  # the frame's own window among the 8 (frames f-4 .. f+3)
        smooth: int = 1,  # predictions averaged over frames f-smooth .. f+smooth
        ridge: float = 1e4,
        dim_out: int = 64,  # the audio feature's width in the context token
        code_noise: float = 0.1,  # training: noise on the true codes, in units of their spread
        components: int = 4,  # principal shapes predicted (40 = 2 x N_MOUTH: the whole code)
        calibrate: float = 0.5,  # how much of the ridge's shrinkage to undo, 0..1 (``fit_codes``)
        max_gain: float = 4.0,
        per_speaker: bool = False,  # fit the motion only: each video's codes minus its mean;
        # a person's own mean shape then comes from a reference frame (``person_offset``)
        prior: str | None = None,  # a checkpoint with a fitted MouthPredictor (e.g. the
        # many-speaker model's) that the ridge shrinks towards instead of towards 0 (``fit_codes``)
        prior_strengths: Sequence[float] = (0.0, 0.25, 0.5, 1.0),  # tried in cross-validation
    ) -> None:
        super().__init__()
        self.per_speaker = per_speaker
        self.prior, self.prior_strengths = prior, tuple(prior_strengths)
        if not 0 < components <= 2 * N_MOUTH:
            raise ValueError(f"components must be in 1..{2 * N_MOUTH}, got {components}")
        self.feature_dim, self.dim_out = feature_dim, dim_out
        self.centre, self.smooth = centre, smooth
        self.ridge = ridge
        self.code_noise = code_noise
        if not 0.0 <= calibrate <= 1.0:
            raise ValueError(f"calibrate must be in [0, 1], got {calibrate}")
        self.calibrate, self.max_gain = calibrate, max_gain
        self.embed = nn.Sequential(
            nn.Linear(2 * N_MOUTH, 128), nn.LeakyReLU(0.02), nn.Linear(128, dim_out)
        )
        n_in = win_size * feature_dim
        self.register_buffer("mean", torch.zeros(n_in))
        self.register_buffer("std", torch.ones(n_in))
        self.register_buffer("weight", torch.zeros(n_in, components))
        self.register_buffer("bias", torch.zeros(2 * N_MOUTH))  # the mean shape
        self.register_buffer("code_std", torch.ones(2 * N_MOUTH))
        self.register_buffer("basis", torch.eye(components, 2 * N_MOUTH))  # principal shapes
        self.register_buffer("pc_std", torch.ones(components))
        self.register_buffer("gain", torch.ones(components))
        self.register_buffer("template", torch.zeros(len(STABLE_POINTS), 2))
        self.register_buffer("fitted", torch.tensor(False))

    def inputs(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, D) -> (B, 8, n_in) standardised inputs, one per window (fitted stats)."""
        x = audio.flatten(-2).to(self.mean)
        return (x - self.mean) / self.std

    def code(self, mouth: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """(B, 20, 2) mouth, (B, 39, 2) upper-face landmarks -> (B, 40) codes (fitted template)."""
        return mouth_code(mouth, upper, self.template)

    @torch.no_grad()
    def fit(
        self, audio: torch.Tensor, mouth: torch.Tensor, upper: torch.Tensor,
        videos: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        """Fit on (N, 8, 16, D) audio and the (N, 20, 2) mouth landmarks of the same frames; the
        template is the mean face of their (N, 39, 2) upper-face landmarks. With ``per_speaker``
        each video's (``videos`` (N,) ids) codes are taken relative to its own mean."""
        self.template.copy_(shape_template(upper))
        codes = self.code(mouth, upper)
        if self.per_speaker:
            codes = speaker_relative(codes, videos)
        self.fit_codes(audio, codes)

    @torch.no_grad()
    def fit_codes(self, audio: torch.Tensor, codes: torch.Tensor, folds: int = 5) -> None:
        """Closed-form ridge fit on (N, 8, 16, D) audio and (N, 40) codes, in float64, of the
        codes' first ``components`` principal shapes.

        A ridge fitted on a few hundred frames predicts each shape's direction well but about a
        third of its size (on andrew's held-out clip: corr 0.6 with the truth's opening, spread
        0.37 of it), so the mouth hardly moves. With ``calibrate`` c each component's prediction
        is scaled by ``gain`` = r ** c, where r is the truth's spread over that of predictions
        made on contiguous blocks (``folds``) of the training frames by fits on the others,
        clipped to [1, ``max_gain``]: c = 1 restores the whole spread (and moves the mouth as much
        as the truth's, sometimes the wrong way), c = 0.5 about two thirds of it.

        With a ``prior`` the ridge shrinks towards s times the prior's weights rather than
        towards 0, s the one of ``prior_strengths`` whose held-out blocks predict best (0: the
        prior does not help this speaker and is not used)."""
        x = audio[:, self.centre].flatten(1).double()
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp_min(1e-6))
        y = codes.double()
        self.bias.copy_(y.mean(0))
        self.code_std.copy_(y.std(0).clamp_min(1e-6))
        centred = y - y.mean(0)
        basis = torch.linalg.svd(centred)[2][: len(self.basis)]  # (K, 40)
        self.basis.copy_(basis)
        pcs = centred @ basis.T  # (N, K)
        self.pc_std.copy_(pcs.std(0).clamp_min(1e-6))
        start = None if self.prior is None else self.prior_start(audio, pcs, folds)
        self.weight.copy_(self.solve(audio, pcs, start))
        self.gain.fill_(1.0)
        if self.calibrate:
            spread = pcs.std(0) / self.held_out(audio, pcs, start, folds).std(0).clamp_min(1e-12)
            self.gain.copy_(spread.clamp(1.0, self.max_gain) ** self.calibrate)
            logger.info("mouth predictor: shrinkage undone by gains %s", self.gain.tolist())
        self.fitted.fill_(True)

    def held_out(
        self, audio: torch.Tensor, pcs: torch.Tensor, start: torch.Tensor | None, folds: int
    ) -> torch.Tensor:
        """(N, K) predictions of each of ``folds`` contiguous blocks by a fit on the others."""
        return torch.cat(
            [
                self.predict(audio[b], self.solve(audio[other], pcs[other], start))
                for b, other in blocks(len(pcs), folds)
            ]
        )

    def prior_start(self, audio: torch.Tensor, pcs: torch.Tensor, folds: int) -> torch.Tensor:
        """The prior's weights, scaled by the strength that predicts the held-out blocks best."""
        prior = prior_weight(self.prior, self.std, self.basis)
        errors = {
            s: (self.held_out(audio, pcs, s * prior, folds) - pcs).pow(2).mean().item()
            for s in self.prior_strengths
        }
        best = min(errors, key=errors.get)
        logger.info(
            "mouth predictor: prior %s at strength %s (held-out error by strength: %s)",
            self.prior, best, {s: round(e, 4) for s, e in errors.items()},
        )  # fmt: skip
        return best * prior

    def solve(
        self, audio: torch.Tensor, targets: torch.Tensor, start: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(n_in, K) ridge weights from the frames' own windows of (N, 8, 16, D) ``audio`` to
        centred (N, K) ``targets``, in the smaller of the primal (n_in) and dual (N) spaces,
        shrunk towards ``start`` (n_in, K) when given, else towards 0."""
        x = self.inputs(audio[:, self.centre]).double()
        y = targets.double() - targets.double().mean(0)
        if start is not None:
            y = y - x @ start
        n, d = x.shape
        if d <= n:
            w = torch.linalg.solve(x.T @ x + self.ridge * torch.eye(d, dtype=x.dtype), x.T @ y)
        else:
            w = x.T @ torch.linalg.solve(x @ x.T + self.ridge * torch.eye(n, dtype=x.dtype), y)
        return w if start is None else w + start

    def predict(self, audio: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, D) -> (B, K) principal-shape scores by ``weight``, averaged over the
        windows of frames f-smooth .. f+smooth."""
        lo, hi = self.centre - self.smooth, self.centre + self.smooth + 1
        if lo < 0 or hi > audio.shape[1]:
            raise ValueError(
                f"MouthPredictor: centre {self.centre} +- smooth {self.smooth} is outside the "
                f"{audio.shape[1]} audio windows per frame"
            )
        return (self.inputs(audio[:, lo:hi]) @ weight.to(self.mean)).mean(1)

    def project(self, code: torch.Tensor) -> torch.Tensor:
        """(B, 40) codes -> their shapes within the principal components (what is predicted)."""
        return self.bias + (code.to(self.bias) - self.bias) @ self.basis.T @ self.basis

    def add_noise(self, code: torch.Tensor) -> torch.Tensor:
        """(B, 40) true codes within the principal shapes, plus ``code_noise`` x their spread
        (training: the predictions it will be given at test time are off by about that much)."""
        noise = self.code_noise * self.pc_std * torch.randn(len(code), len(self.basis)).to(code)
        return self.project(code) + noise @ self.basis

    def points(self, code: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """(B, 40) codes -> (B, 20, 2) mouth points on the faces of (B, 39, 2) ``upper``."""
        return mouth_points(code, upper, self.template)

    def feature(self, code: torch.Tensor) -> torch.Tensor:
        """(B, 40) codes -> (B, dim_out) feature."""
        return self.embed((code.to(self.bias) - self.bias) / self.code_std)

    def motion(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, D) -> (B, 40) predicted departure from the mean shape."""
        if not bool(self.fitted):
            raise RuntimeError(
                "MouthPredictor is not fitted: LatentDiffusion fits it when training starts "
                "(model.params.mouth_config); a checkpoint of such a run carries the fit"
            )
        return (self.gain * self.predict(audio, self.weight)) @ self.basis

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, D) -> (B, 40) predicted mouth shape codes."""
        return self.bias + self.motion(audio)

    def person_offset(self, code: torch.Tensor, audio: torch.Tensor | None = None) -> torch.Tensor:
        """(40,) shift from the fitted mean shape to a person's, from one reference frame's (40,)
        code, less the motion its own (8, 16, D) audio predicts when that is known."""
        shift = code.to(self.bias) - self.bias
        if audio is not None:
            shift = shift - self.motion(audio[None])[0]
        return shift


def prior_weight(path: str, std: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(n_in, K) weights of the fitted MouthPredictor in checkpoint ``path``, from inputs
    standardised by ``std`` to the (K, 40) principal shapes ``basis`` of another fit: the prior's
    predicted motion (its gains included) re-expressed in that fit's inputs and shapes. The two
    codes' template faces differ a little (both are mean faces of unit size); the strength chosen
    in cross-validation judges what that costs."""
    sd = load_state_dict_file(path, "(model.params.mouth_config.params.prior)")
    p = {k.removeprefix("mouth_model."): v for k, v in sd.items() if k.startswith("mouth_model.")}
    if not p or not bool(p.get("fitted", False)):
        raise ValueError(f"mouth predictor prior {path}: no fitted MouthPredictor (mouth_model.*)")
    if p["std"].shape != std.shape:
        raise ValueError(
            f"mouth predictor prior {path}: it reads {p['std'].numel()} audio inputs per window, "
            f"this model {std.numel()} (another audio feature or window size)"
        )
    raw = p["weight"].double() * p["gain"].double() / p["std"].double()[:, None]
    return (std.double()[:, None] * raw) @ p["basis"].double() @ basis.double().T


def speaker_relative(codes: torch.Tensor, videos: torch.Tensor | None) -> torch.Tensor:
    """(N, 40) codes with each video's mean replaced by the mean over all videos."""
    if videos is None:
        raise ValueError("MouthPredictor(per_speaker=True).fit needs the frames' video ids")
    out = codes.clone()
    for v in videos.unique():
        rows = videos == v
        out[rows] += codes.mean(0) - codes[rows].mean(0)
    return out


def blocks(n: int, folds: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(held-out, rest) index pairs of ``folds`` contiguous blocks of range(n)."""
    idx = torch.arange(n)
    return [(b, idx[~torch.isin(idx, b)]) for b in torch.tensor_split(idx, folds)]


def fit_on_dataset(model: MouthPredictor, dataset: Dataset, batch_size: int = 64) -> None:
    """Fit ``model`` on every item of a talking dataset (audio, upper-face and mouth landmarks)."""
    audio, mouth, upper, videos = [], [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="fitting the mouth predictor", leave=False):
        audio.append(batch["audio_smooth"].float())
        mouth.append(batch["mouth_landmarks"].float())
        upper.append(batch["landmarks"].float())
        videos.append(batch["video_id"])
    model.fit(torch.cat(audio), torch.cat(mouth), torch.cat(upper), torch.cat(videos))
    logger.info("mouth predictor: ridge fit on %d training frames", sum(map(len, audio)))
