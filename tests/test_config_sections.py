"""``_base_`` inside a section and ``FILE#dotted.key`` (ldm/config.py), and the demo's first stage
that inherits its architecture through them."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ldm.config import ConfigError, load_config

from conftest import ROOT

LDM = ROOT / "configs/latent-diffusion"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_section_inherits_a_section_of_another_file_under_its_own_keys(tmp_path):
    write(tmp_path / "ae/ae.yaml", "model:\n  params:\n    arch: {ch: 32, depth: 2, norm: pixel}\n")
    child = write(
        tmp_path / "ldm/demo.yaml",
        "first:\n  params:\n    arch:\n      _base_: ../ae/ae.yaml#model.params.arch\n"
        "      depth: 3\n    other: 1\n",
    )
    config = load_config([str(child)])
    assert OmegaConf.to_container(config.first) == {
        "params": {"arch": {"ch": 32, "depth": 3, "norm": "pixel"}, "other": 1}
    }
    write(tmp_path / "ldm/bad.yaml", "first:\n  _base_: ../ae/ae.yaml#model.nothing\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: _base_ .*ae\.yaml has no section"):
        load_config([str(tmp_path / "ldm/bad.yaml")])


def test_a_section_base_can_close_a_cycle_through_a_file_base(tmp_path):
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "x:\n  _base_: a.yaml#x\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config([str(tmp_path / "a.yaml")])


def test_the_demo_first_stage_is_the_autoencoder_the_demo_trains():
    demo = load_config([str(LDM / "talking-small.yaml"), str(LDM / "talking-demo.yaml")])
    autoencoder = load_config([str(ROOT / "configs/autoencoder/kl_f4_small.yaml")])
    first_stage = demo.model.params.first_stage_config
    assert first_stage.target == autoencoder.model.target
    assert first_stage.params.ddconfig == autoencoder.model.params.ddconfig
    assert first_stage.params.embed_dim == autoencoder.model.params.embed_dim
