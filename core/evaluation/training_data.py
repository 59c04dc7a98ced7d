"""The real images something was trained on: from a run directory or a data config.

``raresynth audit`` compares images made by any tool with the images a generator
learned from. That reference is either a run directory (its ``config.yaml`` says
which data, its ``split.json`` which images trained it: the data is loaded and split
again, and must split the same way) or a data config (a YAML file holding a ``data:``
section, such as a run config, or the data section's fields themselves), whose
training split is the reference.
"""

from __future__ import annotations

from pathlib import Path

import pydantic

from ..config import DataConfig, format_validation_error, is_labels_file, load_config, read_yaml
from ..data.dataset import Dataset, check_split, load_dataset, load_split
from ..errors import ConfigError
from ..registry import Registry


def load_training_data(path: str | Path, registry: Registry) -> Dataset:
    """The dataset of a run directory (checked against its ``split.json``) or of a data config file."""
    path = Path(path).expanduser()
    if path.is_dir():
        config_path = path / "config.yaml"
        if not config_path.is_file():
            raise ConfigError(f"{path}: not a run directory (no config.yaml); give a run directory or a data config file")
        dataset = load_dataset(load_config(config_path, registry=registry).data, registry)
        check_split(dataset, load_split(path / "split.json"))
        return dataset
    if not path.is_file():
        raise ConfigError(f"{path}: no such run directory or data config file")
    content = read_yaml(path)
    section = content.get("data", content) if isinstance(content, dict) else content
    try:
        config = DataConfig.model_validate(section)
    except pydantic.ValidationError as exc:
        lines = format_validation_error(exc, "data." if "data" in content else "", DataConfig)
        raise ConfigError("\n".join(f"{path}: {line}" for line in lines)) from None
    if config.source and not Path(config.source).expanduser().is_absolute():
        config.source = str((path.resolve().parent / config.source).resolve())
    if is_labels_file(config.labels) and not Path(config.labels).expanduser().is_absolute():
        config.labels = str((path.resolve().parent / config.labels).resolve())  # like data.source
    return load_dataset(config, registry)
