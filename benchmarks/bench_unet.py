"""Paper-config UNet forward on CPU: seconds, GFLOP/s against a same-run fp32 matmul rate, and the
speed-up over an original-style module (LDM's einsum attention, no single-token shortcut).

    python benchmarks/bench_unet.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager

import torch
from einops import rearrange
from omegaconf import OmegaConf

from ldm.modules.attention import CrossAttention
from ldm.util import instantiate_from_config

logger = logging.getLogger("bench_unet")
UNET_GFLOP = 343.0  # one forward of the paper UNet at batch 1, 9x64x64 (issue #2)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 matmul rate of this machine right now, GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def original_attention(self: CrossAttention, x: torch.Tensor, context=None) -> torch.Tensor:
    """LDM's CrossAttention.forward as the original runs it: einsum, softmax, every token."""
    context = x if context is None else context
    h = self.heads
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    q, k, v = (rearrange(t, "b n (h d) -> (b h) n d", h=h) for t in (q, k, v))
    sim = torch.einsum("b i d, b j d -> b i j", q, k) * q.shape[-1] ** -0.5
    out = torch.einsum("b i j, b j d -> b i d", sim.softmax(dim=-1), v)
    return self.to_out(rearrange(out, "(b h) n d -> b n (h d)", h=h))


@contextmanager
def original_style():
    """Temporarily run every CrossAttention the original way."""
    ours = CrossAttention.forward
    CrossAttention.forward = original_attention
    try:
        yield
    finally:
        CrossAttention.forward = ours


def time_forward(unet, x, t, ctx, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one forward under inference_mode (after a warm-up)."""
    with torch.inference_mode():
        unet(x, t, ctx)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            unet(x, t, ctx)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = OmegaConf.load("configs/latent-diffusion/talking.yaml").model.params.unet_config
    unet = instantiate_from_config(cfg).eval()
    x, t, ctx = torch.randn(1, 9, 64, 64), torch.tensor([500]), torch.randn(1, 1, 128)
    rate = matmul_gflops()
    with original_style():
        t_orig = time_forward(unet, x, t, ctx, args.repeats)
    t_ours = time_forward(unet, x, t, ctx, args.repeats)
    unet_cl = unet.to(memory_format=torch.channels_last)
    t_cl = time_forward(unet_cl, x.to(memory_format=torch.channels_last), t, ctx, args.repeats)
    logger.info("threads %d, fp32 matmul %.1f GFLOP/s", torch.get_num_threads(), rate)
    logger.info("%-28s %8s %10s %12s %9s", "UNet forward (B=1, 9x64x64)", "s", "GFLOP/s",
                "of matmul", "speed-up")  # fmt: skip
    for name, sec in (("original-style", t_orig), ("ours", t_ours), ("ours, channels_last", t_cl)):
        gflops = UNET_GFLOP / sec
        logger.info("%-28s %8.2f %10.1f %11.0f%% %8.2fx", name, sec, gflops, 100 * gflops / rate,
                    t_orig / sec)  # fmt: skip


if __name__ == "__main__":
    main()
