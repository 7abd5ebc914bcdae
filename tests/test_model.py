"""The paper model's structure and its modules' outputs against the original DiffTalk code."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from ldm.config import load_config
from ldm.modules.attention import CrossAttention
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.encoders.modules import AudioAttNet, AudioNet, LdmNet, encode_audio
from ldm.util import count_params, instantiate_from_config

from conftest import FIXTURES, ROOT, require

FIXTURE_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model_for_audio.",
    "cond_stage_model_for_audio_smooth.",
    "cond_stage_model_for_ldm.",
)


def paper_model_on_meta():
    cfg = OmegaConf.load(ROOT / "configs/latent-diffusion/talking.yaml")
    cfg.model.params.first_stage_config.params.ckpt_path = None
    with torch.device("meta"):
        return instantiate_from_config(cfg.model)


def test_paper_config_state_dict_equals_the_original_line_for_line():
    rows = require(FIXTURES / "difftalk_paper_state_dict.tsv").read_text().splitlines()[1:]
    expected = [tuple(row.split("\t")) for row in rows]
    model = paper_model_on_meta()
    ours = [
        (k, "x".join(str(s) for s in v.shape))
        for k, v in model.state_dict().items()
        if k.startswith(FIXTURE_PREFIXES)
    ]
    assert len(ours) == len(expected)
    assert ours == expected
    assert count_params(model.model.diffusion_model) == 530_152_963


def test_unet_reproduces_the_original_output(original_vectors):
    v = original_vectors["unet"]
    unet = UNetModel(**v["config"])
    unet.load_state_dict(v["state_dict"], strict=True)
    with torch.no_grad():
        out = unet(v["x"], v["t"], v["context"])
    torch.testing.assert_close(out, v["out"], atol=1e-5, rtol=1e-4)


def test_conditioners_have_the_original_sizes_and_outputs(original_vectors):
    v = original_vectors["conditioners"]
    audio_net, att_net, ldm_net = AudioNet(64, 16), AudioAttNet(32, 8), LdmNet(39, 64)
    assert [count_params(m) for m in (audio_net, att_net, ldm_net)] == [32_800, 2_149, 22_528]
    audio_net.load_state_dict(v["audio_net"])
    att_net.load_state_dict(v["audio_att_net"])
    ldm_net.load_state_dict(v["ldm_net"])
    with torch.no_grad():
        audio = encode_audio(audio_net, att_net, v["audio_smooth"])
        landmarks = ldm_net(v["landmarks"])
    torch.testing.assert_close(audio, v["audio_feature"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(landmarks, v["landmark_feature"], atol=1e-5, rtol=1e-4)
    context = torch.cat([audio, landmarks], dim=-1)[:, None]
    torch.testing.assert_close(context, v["context"], atol=1e-5, rtol=1e-4)


def test_attention_width_quirk_only_reads_the_first_channels():
    att = AudioAttNet(dim_aud=32, seq_len=8)
    x = torch.randn(3, 8, 64)
    y = x.clone()
    y[..., 32:] = torch.randn(3, 8, 32)  # change only the channels the logits ignore
    weights_x = att.attentionNet(att.attentionConvNet(x[..., :32].transpose(1, 2)))
    weights_y = att.attentionNet(att.attentionConvNet(y[..., :32].transpose(1, 2)))
    torch.testing.assert_close(weights_x, weights_y)
    assert not torch.allclose(att(x), att(y))  # but the output still mixes all 64 channels


@pytest.mark.parametrize(("win", "dim", "points"), [(16, 384, 39), (8, 768, 68), (32, 29, 20)])
def test_conditioners_generalise_by_config(win, dim, points):
    audio = torch.randn(2, 8, win, dim)
    feature = encode_audio(AudioNet(64, win, dim), AudioAttNet(32, 8), audio)
    assert feature.shape == (2, 64)
    assert LdmNet(points, 64)(torch.randn(2, points, 2)).shape == (2, 64)
    with pytest.raises(ValueError, match="power of two"):
        AudioNet(64, 12, dim)


def test_single_context_token_shortcut_equals_full_attention():
    attn = CrossAttention(query_dim=64, context_dim=128, heads=4, dim_head=16).eval()
    x, context = torch.randn(2, 50, 64), torch.randn(2, 1, 128)
    one_token = attn(x, context)
    # Two identical keys take the full SDPA path; softmax splits 1/2-1/2 over equal values.
    two_tokens = attn(x, context.repeat(1, 2, 1))
    torch.testing.assert_close(one_token, two_tokens, atol=1e-5, rtol=1e-5)


def test_unet_keeps_shapes_and_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    kwargs = dict(
        image_size=16, in_channels=9, out_channels=3, model_channels=32,
        attention_resolutions=[2], num_res_blocks=1, channel_mult=[1, 2],
        num_head_channels=16, context_dim=128,
    )  # fmt: skip
    plain, ckpt = UNetModel(**kwargs), UNetModel(**kwargs, use_checkpoint=True)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.05)  # non-zero outputs, so gradients reach every layer
    ckpt.load_state_dict(plain.state_dict())
    x, t, ctx = torch.randn(2, 9, 16, 16), torch.tensor([3, 700]), torch.randn(2, 1, 128)
    grads = []
    for model in (plain, ckpt):
        out = model(x, t, ctx)
        assert out.shape == (2, 3, 16, 16)
        out.square().mean().backward()
        grads.append(model.input_blocks[0][0].weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def small_model_on_meta(**overrides):
    """The small config on the meta device with dotted-key overrides under model.params."""
    cfg = load_config([str(ROOT / "configs/latent-diffusion/talking-small.yaml")])
    cfg.model.params.first_stage_config.params.ckpt_path = None
    for key, value in overrides.items():
        OmegaConf.update(cfg.model.params, key, value)
    with torch.device("meta"):
        return instantiate_from_config(cfg.model)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"unet_config.params.context_dim": 96}, r"unet_config\.params\.context_dim = 96"),
        ({"landmark_config.params.dim_out": 32}, r"landmark_config\.params\.dim_out \(32\)"),
        ({"audio_config.params.dim_aud": 16}, r"audio_config\.params\.dim_aud \(16\)"),
        ({"unet_config.params.in_channels": 6}, r"unet_config\.params\.in_channels = 6"),
        ({"unet_config.params.out_channels": 4}, r"unet_config\.params\.out_channels = 4"),
        ({"channels": 4}, r"model\.params\.channels = 4"),
    ],
)
def test_mismatched_sizes_fail_at_construction_naming_the_keys(overrides, named):
    with pytest.raises(ValueError, match=named):
        small_model_on_meta(**overrides)


def test_all_size_mismatches_are_in_one_error():
    with pytest.raises(ValueError) as err:
        small_model_on_meta(**{"first_stage_config.params.embed_dim": 4})
    message = str(err.value)
    assert message.count("\n- ") == 3  # in_channels, out_channels and channels
    assert "first_stage_config.params.embed_dim" in message
