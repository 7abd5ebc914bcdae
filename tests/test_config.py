"""Config loading: ``_base_`` inheritance, and the small configs as overrides of the paper's."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ldm.config import ConfigError, load_config

from conftest import ROOT

LDM = ROOT / "configs/latent-diffusion"
AE = ROOT / "configs/autoencoder"
SMALL_DATA_AND_LOGS = (  # what both small configs change besides the model's sizes
    "data.params.num_workers",
    "data.params.train.params.size",
    "data.params.validation.params.size",
    "data.params.validation.params.max_items",
    "lightning.callbacks.image_logger.params.batch_frequency",
    "lightning.callbacks.image_logger.params.max_images",
    "lightning.trainer.benchmark",
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def flat(config) -> dict:
    """{dotted.key: value} of a config's leaves (lists kept whole)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(config), "")
    return out


def test_base_files_merge_first_relative_to_the_yaml_and_chain(tmp_path, monkeypatch):
    write(tmp_path / "paper.yaml", "x: 1\ny: {a: 1, b: 2}\nlist: [1, 2, 3]\n")
    write(tmp_path / "small/small.yaml", "_base_: ../paper.yaml\ny: {b: 3}\nlist: [4]\n")
    child = write(tmp_path / "small/tiny.yaml", "_base_: small.yaml\nz: 5\n")
    monkeypatch.chdir("/")  # paths are relative to the file, not the working directory
    config = load_config([str(child)], ["y.a=7"])
    assert (config.x, config.y.a, config.y.b, config.z) == (1, 7, 3, 5)
    assert list(config.list) == [4]  # a list is replaced, as a later --base file would
    assert "_base_" not in config


def test_a_list_of_bases_merges_left_to_right(tmp_path):
    write(tmp_path / "a.yaml", "k: a\nonly_a: 1\n")
    write(tmp_path / "b.yaml", "k: b\n")
    child = write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    config = load_config([str(child)])
    assert (config.k, config.only_a) == ("b", 1)


def test_base_cycles_and_missing_bases_name_the_files(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle.*a\.yaml.*b\.yaml"):
        load_config([str(tmp_path / "a.yaml")])
    write(tmp_path / "c.yaml", "_base_: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"gone\.yaml.*c\.yaml"):
        load_config([str(tmp_path / "c.yaml")])


def test_a_base_that_swaps_a_target_replaces_its_params(tmp_path):
    write(tmp_path / "a.yaml", "m: {target: torch.nn.Linear, params: {in_features: 2}}\n")
    child = write(tmp_path / "b.yaml", "_base_: a.yaml\nm: {target: torch.nn.Identity}\n")
    assert "params" not in load_config([str(child)]).m


@pytest.mark.parametrize(
    "small, paper, changed",
    [
        (
            LDM / "talking-small.yaml",
            LDM / "talking.yaml",
            {
                "model.base_learning_rate",
                "model.params.image_size",
                "model.params.unet_config.params.image_size",
                "model.params.unet_config.params.model_channels",
                "model.params.unet_config.params.attention_resolutions",
                "model.params.unet_config.params.num_res_blocks",
                "model.params.unet_config.params.channel_mult",
                "model.params.unet_config.params.num_head_channels",
                "model.params.unet_config.params.use_checkpoint",
                "model.params.first_stage_config.params.n_embed",
                "model.params.first_stage_config.params.ckpt_path",
                "model.params.first_stage_config.params.ddconfig.resolution",
                "model.params.first_stage_config.params.ddconfig.ch",
                "model.params.first_stage_config.params.ddconfig.num_res_blocks",
                "lightning.callbacks.image_logger.params.ddim_steps",
                "lightning.callbacks.image_logger.params.increase_log_steps",
                *SMALL_DATA_AND_LOGS,
            },
        ),
        (
            AE / "vq_f4_small.yaml",
            AE / "vq_f4_paper.yaml",
            {
                "model.base_learning_rate",
                "model.params.n_embed",
                "model.params.ddconfig.resolution",
                "model.params.ddconfig.ch",
                "model.params.ddconfig.num_res_blocks",
                "model.params.lossconfig.params.disc_start",
                "model.params.lossconfig.params.disc_num_layers",
                "model.params.lossconfig.params.disc_ndf",
                "data.params.batch_size",
                *SMALL_DATA_AND_LOGS,
            },
        ),
    ],
    ids=["talking-small", "vq_f4_small"],
)
def test_small_configs_change_only_the_listed_keys_of_the_paper_configs(small, paper, changed):
    assert "_base_" in OmegaConf.load(small)  # written as an override, not a copy
    ours, theirs = flat(load_config([str(small)])), flat(load_config([str(paper)]))
    assert {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)} == changed
