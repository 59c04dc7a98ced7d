"""raresynth: synthetic medical images from small datasets.

The public API: everything a plugin may import, and nothing else. A plugin (built-in
or third-party) writes ``from raresynth import ...`` and never imports a module below
this package; those are free to move between releases. ::

    from raresynth import hookimpl, Generator, Regularizer, Metric, DataFormat, PluginParams

The names fall into four groups: the plugin contract (hook marker, base classes and
the plain-data types the hooks pass), errors, building blocks for metrics (feature
spaces, similarity, image-set checks) and helpers for backends (checkpoints, grids,
rebuilding a run's generator, atomic file writes).
"""

from .version import __version__  # noqa: I001 - first: every other module may read it

# -- the plugin contract -------------------------------------------------------
from .errors import ConfigError, DataError, PluginError, RaresynthError, RunDirError, TrainingError, did_you_mean
from .interfaces import (
    Augmentation,
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
    RunInfo,
)
from .registry import get_registry, hookimpl, load_plugins

# -- building blocks for metric plugins ---------------------------------------
from .evaluation.embeddings import EmbeddingParams, check_embedding
from .evaluation.features import DOMAIN, PIXELS, Embedding, PerImageCache, Preprocessing, content_hash, features, resolve_device
from .evaluation.imagesets import check_compatible
from .evaluation.similarity import kth_neighbour_distances, ms_ssim, normalized_correlation, pairs_of, pairwise_distances, ssim

# -- helpers for backends -------------------------------------------------------
from .data.images import save_grid
from .files import atomic_path, write_bytes_atomic, write_text_atomic
from .training.checkpoint import list_checkpoints, load_state
from .training.sampling import load_run_generator

__all__ = [
    "DOMAIN",
    "PIXELS",
    "Augmentation",
    "Batch",
    "ConfigError",
    "DataError",
    "DataFormat",
    "DataSpec",
    "Embedding",
    "EmbeddingParams",
    "Generator",
    "ImageSet",
    "Metric",
    "MetricValue",
    "PenaltyInputs",
    "PerImageCache",
    "PluginError",
    "PluginParams",
    "Preprocessing",
    "Progress",
    "RaresynthError",
    "RawImage",
    "Record",
    "Regularizer",
    "RunDirError",
    "RunInfo",
    "TrainingError",
    "__version__",
    "atomic_path",
    "check_compatible",
    "check_embedding",
    "content_hash",
    "did_you_mean",
    "features",
    "get_registry",
    "hookimpl",
    "kth_neighbour_distances",
    "list_checkpoints",
    "load_plugins",
    "load_run_generator",
    "load_state",
    "ms_ssim",
    "normalized_correlation",
    "pairs_of",
    "pairwise_distances",
    "resolve_device",
    "save_grid",
    "ssim",
    "write_bytes_atomic",
    "write_text_atomic",
]
