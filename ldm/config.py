"""Configs: YAML files merged left to right (``--base``), ``_base_`` inheritance, dotlist
overrides, and the checks that turn a wrong key into one clear error.

A YAML may start with ``_base_: other.yaml`` (a path relative to that file, or a list of them):
the named files are merged first and the file's own keys override them, so a small config is
written as its differences from the paper's (``configs/latent-diffusion/talking-small.yaml``).
A ``_base_`` inside a section does the same for that section, and ``FILE#dotted.key`` names a
section of another file; the demo's first stage takes its architecture from the autoencoder's
config that way (``configs/latent-diffusion/talking-demo.yaml``):

    ddconfig:
      _base_: ../autoencoder/kl_f4_small.yaml#model.params.ddconfig
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ldm.util import get_obj_from_str

BASE_KEY = "_base_"

# Merged under every --base list, so these keys exist, can be overridden and are dumped to configs/.
DEFAULT_LIGHTNING = {
    "trainer": {},
    "modelcheckpoint": {  # kept checkpoints; every epoch unless every_n_train_steps is set
        "target": "lightning.pytorch.callbacks.ModelCheckpoint",
        "params": {
            "filename": "{epoch:06}-{step:09}",
            "save_top_k": -1,
            "every_n_train_steps": None,
        },
    },
    "last_checkpoint": {  # checkpoints/last.ckpt, overwritten atomically, what `-r` resumes from
        "target": "ldm.callbacks.LastCheckpoint",
        "params": {"every_n_train_steps": 500},
    },
    "callbacks": {},
}


PL1_HINTS = {  # Lightning 1.x Trainer arguments that LDM-era configs carry
    "gpus": "Lightning 2: pass --gpus 0,1, or lightning.trainer.accelerator/devices",
    "resume_from_checkpoint": "Lightning 2: resume with -r LOGDIR_OR_CKPT",
    "distributed_backend": "Lightning 2: --strategy ddp",
}


class ConfigError(ValueError):
    """A config key or value that cannot work; main.py reports it in one line."""


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> DictConfig:
    """One YAML with its ``_base_`` files merged under it (recursively), ``_base_`` removed."""
    path = Path(path)
    if not path.is_file():
        via = f" (the {BASE_KEY} of {_seen[-1]})" if _seen else ""
        raise FileNotFoundError(f"config file not found: {path}{via}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: {BASE_KEY} cycle through {', '.join(map(str, _seen))}")
    return with_bases(OmegaConf.load(path), path, (*_seen, path.resolve()))


def with_bases(node: DictConfig, path: Path, seen: tuple[Path, ...]) -> DictConfig:
    """``node`` of the YAML ``path`` with every ``_base_`` in it, at any depth, merged under the
    keys beside it (``seen``: the files being read, for the cycle check)."""
    for key in [k for k, v in node.items_ex(resolve=False) if isinstance(v, DictConfig)]:
        node[key] = with_bases(node[key], path, seen)
    bases = node.pop(BASE_KEY, None)
    if bases is None:
        return node
    config = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else bases:
        config = merge_yaml(config, read_base(path, str(base), seen))
    return merge_yaml(config, node)


def read_base(path: Path, base: str, seen: tuple[Path, ...]) -> DictConfig:
    """The YAML ``base`` names (relative to ``path``), or its section at ``FILE#dotted.key``."""
    file, _, key = base.partition("#")
    config = read_yaml(path.parent / file, seen)
    section = OmegaConf.select(config, key) if key else config
    if not isinstance(section, DictConfig):
        raise ConfigError(f"{path}: {BASE_KEY} {base}: {file} has no section {key!r}")
    return section


def merge_yaml(config: DictConfig, update: DictConfig) -> DictConfig:
    """``config`` updated by ``update``; a node whose ``target`` changes is replaced."""
    drop_retargeted(config, update)
    return OmegaConf.merge(config, update)


def load_config(base: list[str], overrides: list[str] = ()) -> DictConfig:
    """Merge DEFAULT_LIGHTNING, the ``--base`` YAMLs (left to right) and dotlist overrides."""
    config = OmegaConf.create({"lightning": DEFAULT_LIGHTNING})
    for path in base:
        config = merge_yaml(config, read_yaml(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"unrecognised argument {item!r}: overrides are written key=value")
        check_override_key(config, item.split("=", 1)[0])
    config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    check_targets(config)
    check_trainer_kwargs(dict(config.lightning.trainer))
    return config


def drop_retargeted(config: DictConfig, update: DictConfig) -> None:
    """Delete every node of ``config`` whose ``target`` the ``update`` changes, so that a later
    YAML that swaps a class (e.g. a KL first stage for a VQ one) replaces its ``params`` instead
    of inheriting keys the new class does not take."""
    for key, new in update.items():
        old = config.get(key) if isinstance(config, DictConfig) else None
        if not (isinstance(old, DictConfig) and isinstance(new, DictConfig)):
            continue
        if "target" in new and "target" in old and new.target != old.target:
            del config[key]
        else:
            drop_retargeted(old, new)


def init_parameters(target: str) -> set[str] | None:
    """Keyword parameters of ``target``'s constructor, following ``**kwargs`` up the MRO;
    None when some class accepts arbitrary keywords all the way up."""
    try:
        obj = get_obj_from_str(target)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"target {target!r} cannot be imported: {err}") from err
    names: set[str] = set()
    for cls in obj.__mro__ if isinstance(obj, type) else ():
        if cls is object or "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def check_targets(node: Any, path: str = "") -> None:
    """Every ``params`` key of every ``target:`` node must be a parameter of that target."""
    if isinstance(node, DictConfig):
        if "target" in node and isinstance(node.get("params"), DictConfig):
            accepted = init_parameters(node.target)
            unknown = [] if accepted is None else sorted(set(node.params) - accepted)
            for key in unknown:
                hint = difflib.get_close_matches(str(key), sorted(accepted), n=1)
                raise ConfigError(
                    f"{path}.params.{key}: {node.target} takes no parameter {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                )
        for key, value in node.items_ex(resolve=False):
            check_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            check_targets(value, f"{path}[{i}]")


def check_override_key(config: DictConfig, key: str) -> None:
    """Accept a key that exists, a Trainer argument, a new callback's ``target``, or a new
    ``params`` entry of a ``target`` (checked by check_targets); anything else is a ConfigError."""
    missing = object()
    if OmegaConf.select(config, key, default=missing) is not missing:
        return
    parts = key.split(".")
    parent = ".".join(parts[:-1])
    if parent == "lightning.trainer":
        check_trainer_kwargs({parts[-1]: None})
        return
    if parts[:2] == ["lightning", "callbacks"] and len(parts) >= 4 and parts[3] == "target":
        return  # a new callback: lightning.callbacks.NAME.target=pkg.Class
    if len(parts) >= 2 and parts[-2] == "params":
        owner = OmegaConf.select(config, ".".join(parts[:-2]), default=None)
        if isinstance(owner, DictConfig) and "target" in owner:
            return
    i = next(
        i for i in range(len(parts)) if OmegaConf.select(config, ".".join(parts[: i + 1])) is None
    )
    node = OmegaConf.select(config, ".".join(parts[:i])) if i else config
    siblings = [str(s) for s in node.keys()] if isinstance(node, DictConfig) else []
    hint = difflib.get_close_matches(parts[i], siblings, n=1)
    raise ConfigError(
        f"override {key!r}: the merged config has no key {'.'.join(parts[: i + 1])!r}"
        + (f" (did you mean {'.'.join([*parts[:i], hint[0]])!r}?)" if hint else "")
    )


def check_trainer_kwargs(kwargs: dict[str, Any]) -> None:
    """Raise ConfigError for ``lightning.trainer`` keys that pl.Trainer does not accept."""
    unknown = sorted(set(kwargs) - (init_parameters("lightning.pytorch.Trainer") or set()))
    if unknown:
        hints = [PL1_HINTS[k] for k in unknown if k in PL1_HINTS]
        raise ConfigError(
            f"lightning.trainer: pl.Trainer has no argument(s) {unknown}"
            + (f" ({'; '.join(hints)})" if hints else "")
        )
