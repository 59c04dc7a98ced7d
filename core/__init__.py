"""raresynth: synthetic medical images from small datasets.

The public API, everything a plugin author imports::

    from raresynth import hookimpl, Generator, Regularizer, Metric, DataFormat, PluginParams
"""

from .errors import ConfigError, DataError, PluginError, RaresynthError, RunDirError, TrainingError, did_you_mean
from .interfaces import (
    Batch,
    DataFormat,
    DataSpec,
    Generator,
    ImageSet,
    Metric,
    MetricValue,
    PenaltyInputs,
    PluginParams,
    Progress,
    RawImage,
    Record,
    Regularizer,
)
from .registry import get_registry, hookimpl, load_plugins

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "ConfigError",
    "DataError",
    "DataFormat",
    "DataSpec",
    "Generator",
    "ImageSet",
    "Metric",
    "MetricValue",
    "PenaltyInputs",
    "PluginError",
    "PluginParams",
    "Progress",
    "RaresynthError",
    "RawImage",
    "Record",
    "Regularizer",
    "RunDirError",
    "TrainingError",
    "did_you_mean",
    "get_registry",
    "hookimpl",
    "load_plugins",
]
