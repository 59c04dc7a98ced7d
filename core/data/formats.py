"""Choosing a data format: the one the config names, or the one that recognizes the source (``format: auto``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..config import DataConfig, validate_plugin_params
from ..errors import ConfigError, DataError
from ..interfaces import DataFormat
from ..registry import Registry

# ---------------------------------------------------------------------------
# Choosing the format
# ---------------------------------------------------------------------------


def resolve_format(config: DataConfig, registry: Registry) -> DataFormat:
    """An instance of the format ``config.format`` names (or detects), with validated options."""
    source = _existing_source(config)
    name = config.format if config.format != "auto" else detect_format(source, registry)
    cls = registry.data_format(name)
    if cls.needs_source and source is None:
        raise ConfigError(f"data.source: format '{name}' reads files: set data.source to a file or folder")
    return cls(validate_plugin_params(cls, config.format_options, "data.format_options"))


def detect_format(source: Path | None, registry: Registry) -> str:
    """The one registered format whose ``can_read`` recognizes ``source`` (``format: auto``)."""
    if source is None:
        raise ConfigError("data.source: required with format 'auto' (or set data.format)")
    names = registry.names("data_format")
    matches = [name for name in names if registry.data_format(name).can_read(source)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DataError(f"{source}: no images found (formats looked for: {_describe_formats(names, registry)}); check data.source, or set data.format")
    raise DataError(f"{source}: several formats can read it ({', '.join(matches)}); set data.format to the one you mean")


def _describe_formats(names: Iterable[str], registry: Registry) -> str:
    return "; ".join(f"{name} ({registry.data_format(name).description or 'no description'})" for name in names) or "none installed"


def _existing_source(config: DataConfig) -> Path | None:
    if not config.source:
        return None
    source = Path(config.source).expanduser()
    if not source.exists():
        raise DataError(f"{source}: data.source not found; check the path (relative paths are relative to the config file)")
    return source
