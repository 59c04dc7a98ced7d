"""Image features for metrics: one preprocessing, three kinds of embedding, one cache.

Metric plugins compare image sets in some feature space. This module gives all of
them the same building blocks, so that every metric sees an image the same way:

* :class:`Preprocessing` - what happens to an image before an embedding sees it:
  quantize to 8 bits (exactly what a PNG written by ``raresynth sample`` holds, so an
  in-memory set and the same set read back from PNG files give the same features),
  then channels (1-channel images are repeated to RGB where an embedding needs RGB;
  RGB to gray uses BT.601 luma), then resize (bilinear, antialiased when shrinking,
  the rule the data pipeline uses).
* Embeddings, chosen by name with :func:`make_embedding`:

  ``pixels``
      the preprocessed pixels themselves, flattened.
  ``domain``
      a small CNN trained on the real *training* split only (contrastive, plus a
      label loss when the training set has labels); needs no download. Its
      values are dataset-specific: metric plugins label them with ``_domain`` and
      they must not be compared across datasets. The trained weights are cached per
      training set (safetensors). It lives in :mod:`raresynth.evaluation.domain_embedding`.
  any torch-fidelity feature extractor (``inception-v3-compat``, ``vgg16``, or one
      registered with ``torch_fidelity.register_feature_extractor``)
      with its weights read from a local file (:func:`resolve_weights`): raresynth
      never downloads weights. A missing file is an error that says which file, its
      checksum, where to get it and where to put it. The file is checked against its
      full sha256 and read as tensors only (:func:`load_weights`), never unpickled.

* :class:`FeatureCache` - features keyed by (sha256 of the image tensor, embedding id,
  preprocessing id), in memory and on disk as safetensors (no pickles). A benchmark
  computes real-set features once; a changed dataset has another hash and never
  reuses stale features.

Distances and pixel-space similarity (``pairwise_distances``, ``ssim``, ``ms_ssim``,
``normalized_correlation``, ...) are in :mod:`raresynth.evaluation.similarity`; choosing
an embedding by name and the options every embedding metric derives from
(:class:`~raresynth.evaluation.embeddings.EmbeddingParams`) in
:mod:`raresynth.evaluation.embeddings`.

Environment: ``RARESYNTH_CACHE_DIR`` (default ``~/.cache/raresynth``; empty: memory
only) holds ``features/`` and ``embeddings/``; ``RARESYNTH_WEIGHTS_DIR`` is where
pretrained weight files are looked for.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..interfaces import ImageSet

CACHE_ENV = "RARESYNTH_CACHE_DIR"
WEIGHTS_ENV = "RARESYNTH_WEIGHTS_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/raresynth")

#: Names of the embeddings this module provides itself (all others are torch-fidelity's).
PIXELS, DOMAIN = "pixels", "domain"

# ITU-R BT.601 luma weights, as the data pipeline uses for RGB -> gray.
BT601_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------
# Where things are cached, and on which device embeddings run
# ---------------------------------------------------------------------------


def cache_root() -> Path | None:
    """``$RARESYNTH_CACHE_DIR`` (default ``~/.cache/raresynth``); ``None`` when set to empty."""
    value = os.environ.get(CACHE_ENV)
    if value is None:
        return DEFAULT_CACHE_DIR.expanduser()
    return Path(value).expanduser() if value.strip() else None


def resolve_device(device: str) -> torch.device:
    """``"auto"``: the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------------------
# Hashing and preprocessing
# ---------------------------------------------------------------------------


def content_hash(images: torch.Tensor, labels: torch.Tensor | None = None) -> str:
    """sha256 of the images' float32 values and shape (and the labels, when given)."""
    digest = hashlib.sha256()
    array = images.detach().to("cpu", torch.float32).contiguous()
    digest.update(repr(tuple(array.shape)).encode())
    digest.update(array.numpy().tobytes())
    if labels is not None:
        digest.update(b"labels")
        digest.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` float -> uint8 ``(N, C, H, W)``, rounded as ``raresynth.data.images.to_uint8`` does."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` floats, antialiased when shrinking (the data pipeline's rule)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    shrinking = images.shape[-1] > resolution
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", antialias=shrinking, align_corners=False)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """1 -> 3: repeat the gray channel; 3 -> 1: BT.601 luma."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if have == 3 and channels == 1:
        weights = torch.tensor(BT601_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(1, keepdim=True)
    raise ConfigError(f"images have {have} channels; raresynth's metrics take gray (1) or RGB (3) images")


@dataclass(frozen=True)
class Preprocessing:
    """What happens to images before an embedding: quantize to 8 bits, channels, resize."""

    channels: int | None = None  # None: keep the images' own channels
    resolution: int | None = None  # None: keep the images' own size

    @property
    def id(self) -> str:
        return f"u8-c{self.channels or 'same'}-r{self.resolution or 'same'}"

    def uint8(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C', H', W')``: the 8-bit image, channels and size converted."""
        if self.channels is None and self.resolution is None:
            return to_uint8(images)
        return to_uint8(self.apply(images))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """float ``[-1, 1]`` ``(N, C', H', W')``: the 8-bit image, channels and size converted."""
        out = to_uint8(images).float() / 127.5 - 1.0
        if self.channels is not None:
            out = convert_channels(out, self.channels)
        if self.resolution is not None:
            out = resize(out, self.resolution).clamp(-1, 1)
        return out


# ---------------------------------------------------------------------------
# The feature cache
# ---------------------------------------------------------------------------


class FeatureCache:
    """Features by (image content hash, embedding id, preprocessing id).

    Kept in memory (the ``memory_items`` most recent) and, when ``directory`` is set,
    as one safetensors file per entry, named by the sha256 of the key.
    """

    def __init__(self, directory: Path | None, memory_items: int = 64):
        self.directory = directory
        self.memory_items = memory_items
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(images: torch.Tensor, embedding: Embedding) -> str:
        return f"{content_hash(images)}|{embedding.id}|{embedding.preprocessing.id}"

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = self._path(key)
        if path is not None and path.is_file():
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    if (handle.metadata() or {}).get("key") == key:
                        features = handle.get_tensor("features")
                        self._remember(key, features)
                        return features
            except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
                return None
        return None

    def put(self, key: str, features: torch.Tensor) -> None:
        features = features.detach().to("cpu", torch.float32).contiguous()
        self._remember(key, features)
        path = self._path(key)
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            save_file({"features": features}, str(partial), metadata={"key": key})
            os.replace(partial, path)

    def _remember(self, key: str, features: torch.Tensor) -> None:
        self._memory[key] = features
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)

    def features(self, images: torch.Tensor, embedding: Embedding) -> torch.Tensor:
        """``(N, D)`` float32 features of ``images`` (float ``[-1, 1]``), computed once."""
        key = self.key(images, embedding)
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        features = embedding.embed(images).detach().to("cpu", torch.float32)
        if features.ndim != 2 or features.shape[0] != images.shape[0]:
            raise ValueError(f"embedding {embedding.id} returned features of shape {tuple(features.shape)} for {images.shape[0]} images")
        self.put(key, features)
        return features


class PerImageCache:
    """Rows a metric computes image by image, kept in memory by each image's content.

    Much of what a metric computes for one image does not depend on the rest of the set:
    its radiomic features, its distances to the training set. The half-samples behind
    every interval are subsets of a set already measured, copies of training images
    repeat images already seen, and a benchmark measures the same training and held-out
    images for every run and reference row. :meth:`rows` returns one row per image and
    calls ``compute`` only for images it has not seen (with the same ``tag``), once each
    even when a call holds duplicates (copies drawn with replacement).

    At most ``budget`` units are kept, ``size(row)`` each (default 1: ``budget`` counts
    images), least recently used rows leaving first. ``computed`` counts the rows
    computed, for tests and benchmarks.
    """

    def __init__(self, budget: int, size: Callable[[Any], int] | None = None):
        self.budget = budget
        self.size = size or (lambda row: 1)
        self.computed = 0
        self._rows: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._units = 0

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, images: torch.Tensor, compute: Callable[[torch.Tensor], Sequence[Any]], tag: str = "") -> list[Any]:
        """One row per image of ``images``, in order; ``compute(new)`` gives the rows of the images not kept, in order.

        ``tag`` names what a row depends on besides its image (the reference set, the
        settings): rows with another tag are never returned. :class:`ValueError` when
        ``compute`` returns a different number of rows than it was given images.
        """
        keys = [(tag, content_hash(image)) for image in images]
        first: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key not in self._rows and key not in first:
                first[key] = i
        found: dict[tuple[str, str], Any] = {}
        if first:
            new = list(compute(images[list(first.values())]))
            if len(new) != len(first):
                raise ValueError(f"PerImageCache: compute returned {len(new)} rows for {len(first)} images")
            self.computed += len(first)
            found = dict(zip(first, new))
        for key in keys:
            if key not in found:
                found[key] = self._rows[key]
                self._rows.move_to_end(key)
        for key, row in found.items():
            if key not in self._rows:
                self._rows[key] = row
                self._units += self.size(row)
        while self._units > self.budget and self._rows:
            _, row = self._rows.popitem(last=False)
            self._units -= self.size(row)
        return [found[key] for key in keys]


_CACHES: dict[Path | None, FeatureCache] = {}


def default_cache() -> FeatureCache:
    """The process-wide cache for the current ``$RARESYNTH_CACHE_DIR``."""
    root = cache_root()
    directory = root / "features" if root is not None else None
    if directory not in _CACHES:
        _CACHES[directory] = FeatureCache(directory)
    return _CACHES[directory]


def features(images: torch.Tensor | ImageSet, embedding: Embedding, cache: FeatureCache | None = None) -> torch.Tensor:
    """Features of an image set (or an image tensor) in ``embedding``, through the cache."""
    tensor = images.images if isinstance(images, ImageSet) else images
    return (cache or default_cache()).features(tensor, embedding)


# ---------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------


class Embedding(ABC):
    """A map from images to feature vectors.

    ``id`` names the embedding and its weights exactly (it is part of the cache key);
    ``tag`` is the short label metric plugins append to value names (``fid_domain``);
    ``dataset_specific`` is true when values are not comparable across datasets.
    """

    id: str = ""
    tag: str = ""
    dataset_specific: bool = False
    preprocessing: Preprocessing = Preprocessing()

    @abstractmethod
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` floats in ``[-1, 1]`` -> ``(N, D)`` features."""


class PixelEmbedding(Embedding):
    """The 8-bit pixels, optionally resized, flattened to one vector per image."""

    tag = PIXELS

    def __init__(self, resolution: int | None = None):
        self.preprocessing = Preprocessing(resolution=resolution)
        self.id = f"pixels-v1-r{resolution or 'same'}"

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessing.apply(images).flatten(1)


# -- torch-fidelity extractors with local weights -------------------------


@dataclass(frozen=True)
class KnownWeights:
    """A pretrained weights file a torch-fidelity extractor would otherwise download."""

    filename: str
    url: str
    sha256: str  # the whole digest; the file name ends in its first 8 hex digits (torch.hub's convention)
    size: int  # bytes
    what: str

    @property
    def sha256_prefix(self) -> str:
        return self.sha256[:8]


#: The files behind torch-fidelity's two standard extractors (URLs as in torch-fidelity 0.4
#: ``feature_extractor_inceptionv3.URL_INCEPTION_V3`` and torchvision's ``VGG16_Weights.IMAGENET1K_V1``).
#: The full digests are the published files' (the same values are pinned by several
#: independent projects; each begins with the 8 digits in the file name).
KNOWN_WEIGHTS: dict[str, KnownWeights] = {
    "inception-v3-compat": KnownWeights(
        filename="weights-inception-2015-12-05-6726825d.pth",
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        size=95_628_359,
        what="InceptionV3 (TensorFlow FID port, torch-fidelity 'inception-v3-compat')",
    ),
    "vgg16": KnownWeights(
        filename="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
        size=553_433_881,
        what="VGG16 ImageNet (torchvision IMAGENET1K_V1, torch-fidelity 'vgg16')",
    ),
}

#: torch-fidelity extractors whose class takes a plain state dict (``torch.load`` of the
#: weights file, then ``load_state_dict``): raresynth loads the file itself and hands them
#: the verified tensors. The others (CLIP: ``torch.jit.load``, TorchScript code; DINOv2:
#: ``torch.hub.load``, code from GitHub) run code from their weights and are refused.
STATE_DICT_EXTRACTORS = frozenset({
    "torch_fidelity.feature_extractor_inceptionv3.FeatureExtractorInceptionV3",
    "torch_fidelity.feature_extractor_vgg16.FeatureExtractorVGG16",
})

#: Short tags used in metric value names.
TAGS = {"inception-v3-compat": "inception", "vgg16": "vgg16", PIXELS: PIXELS, DOMAIN: DOMAIN}

_VERIFIED: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _VERIFIED[key] = digest.hexdigest()
    return _VERIFIED[key]


def weights_candidates(extractor: str, weights_path: str | None) -> list[Path]:
    """Where the weights of ``extractor`` are looked for, in order."""
    known = KNOWN_WEIGHTS.get(extractor)
    if weights_path:
        path = Path(weights_path).expanduser()
        if path.is_dir() and known is not None:
            return [path / known.filename]
        return [path]
    if known is None:
        return []
    candidates = []
    if os.environ.get(WEIGHTS_ENV):
        candidates.append(Path(os.environ[WEIGHTS_ENV]).expanduser() / known.filename)
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / known.filename)  # where torch-fidelity downloads to
    return candidates


def missing_weights_message(extractor: str, candidates: list[Path], field: str = "weights_path") -> str:
    """One line: which file is missing, its checksum, where to get it and where to put it."""
    known = KNOWN_WEIGHTS.get(extractor)
    looked = ", ".join(str(p) for p in candidates) or "nowhere"
    if known is None:
        return (f"{field}: feature extractor '{extractor}' needs a local weights file and raresynth never downloads weights; "
                f"set {field} to the file (see torch-fidelity's documentation of '{extractor}' for which file). Looked in: {looked}")
    weights_dir = os.environ.get(WEIGHTS_ENV)
    where = f"${WEIGHTS_ENV} (now {weights_dir})" if weights_dir else f"the folder ${WEIGHTS_ENV} names (unset now)"
    return (f"{field}: weights file {known.filename} for feature extractor '{extractor}' not found "
            f"({known.what}; sha256 {known.sha256}). raresynth never downloads weights: download it once "
            f"on a machine with internet access from {known.url} and put it into {where}, or set {field} to its path. "
            f"Looked in: {looked}")


def resolve_weights(extractor: str, weights_path: str | None, verify: bool = True, field: str = "weights_path",
                    sha256: str | None = None) -> Path | None:
    """The local weights file for a torch-fidelity extractor, checked against its full sha256.

    The expected digest is ``sha256`` (``weights_sha256``: pins any file, e.g. weights
    converted to safetensors) or, for torch-fidelity's standard extractors, the published
    file's (:data:`KNOWN_WEIGHTS`); ``verify=False`` skips the check. Either way the file
    is only ever read as tensors (:func:`load_weights`), never unpickled.
    Returns ``None`` for an extractor that is not one of torch-fidelity's own and got
    no ``weights_path`` (a custom extractor that builds its own weights). Raises
    :class:`ConfigError` when a file is needed and missing, or does not match.
    """
    candidates = weights_candidates(extractor, weights_path)
    if not candidates:
        if _is_torch_fidelity_builtin(extractor):
            raise ConfigError(missing_weights_message(extractor, candidates, field))
        return None
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(missing_weights_message(extractor, candidates, field))
    known = KNOWN_WEIGHTS.get(extractor)
    if sha256 is not None:
        digest = file_sha256(found)
        if digest != sha256.lower():
            raise ConfigError(f"weights_sha256: {found} has sha256 {digest}, not the {sha256} the config pins; "
                              f"is {field} the file you meant?")
    elif verify and known is not None:
        digest = file_sha256(found)
        if digest != known.sha256:
            raise ConfigError(f"{field}: {found} is not the expected {known.filename}: its sha256 is {digest}, expected "
                              f"{known.sha256} ({found.stat().st_size} bytes, expected {known.size}); download it again from {known.url} (for weights you converted yourself, "
                              "pin their digest with weights_sha256, or set verify_weights: false)")
    return found


def load_weights(path: Path, field: str = "weights_path") -> dict[str, torch.Tensor]:
    """A weights file as a state dict (names to tensors), without running any code from it.

    A safetensors file is read as such; anything else with ``torch.load(weights_only=True)``,
    whose unpickler accepts tensors and plain containers only. A file that holds
    pickled code or objects (``torch.load``'s default would run them) is refused.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
        if len(head) == 9 and head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise ConfigError(f"{field}: {path} was refused: it holds pickled objects other than tensors{what}, which could run "
                          "code; raresynth reads weights only as tensors (a state dict, or safetensors). Save the "
                          "model's state_dict() instead") from None
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many kinds on damaged files
        raise ConfigError(f"{field}: {path} is not a PyTorch or safetensors weights file ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"{field}: {path} is not a state dict (a mapping of parameter names to tensors); save the "
                          "model's state_dict() itself")
    return dict(state)


def _torch_fidelity_registry() -> dict:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    return FEATURE_EXTRACTORS_REGISTRY


def _is_torch_fidelity_builtin(extractor: str) -> bool:
    cls = _torch_fidelity_registry().get(extractor)
    return cls is not None and cls.__module__.startswith("torch_fidelity.")


def _class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def require_safe_extractor(extractor: str) -> None:
    """Refuse a torch-fidelity extractor that would run code from its weights (CLIP, DINOv2)."""
    cls = _torch_fidelity_registry().get(extractor)
    if cls is not None and cls.__module__.startswith("torch_fidelity.") and _class_name(cls) not in STATE_DICT_EXTRACTORS:
        raise ConfigError(f"embedding: torch-fidelity's '{extractor}' loads its weights as code (TorchScript or torch.hub), "
                          "which raresynth does not run; use inception-v3-compat, vgg16, pixels or domain, or register "
                          "an extractor that takes a state dict")


def torch_fidelity_extractors() -> list[str]:
    """Names of the feature extractors torch-fidelity knows (its own and registered ones)."""
    return sorted(_torch_fidelity_registry())


class TorchFidelityEmbedding(Embedding):
    """A torch-fidelity feature extractor (uint8 RGB in, one layer's features out).

    The extractor resizes internally (to 299 px for Inception, 224 px for VGG16) with
    its TensorFlow-compatible interpolation; gray images are repeated to RGB first.
    """

    preprocessing = Preprocessing(channels=3)

    def __init__(self, name: str, layer: str | None = None, metric: str = "fid", weights_path: str | None = None,
                 verify_weights: bool = True, device: str = "auto", batch_size: int = 64, seed: int = 0,
                 weights_sha256: str | None = None):
        registry = _torch_fidelity_registry()
        if name not in registry:
            choices = [PIXELS, DOMAIN, *sorted(registry)]
            raise ConfigError(f"embedding: unknown '{name}'; choose one of {', '.join(choices)} "
                              "(or register an extractor with torch_fidelity.register_feature_extractor)")
        cls = registry[name]
        require_safe_extractor(name)
        self.layer = layer or cls.get_default_feature_layer_for_metric(metric)
        if self.layer not in cls.get_provided_features_list():
            raise ConfigError(f"feature_layer: '{self.layer}' is not a layer of '{name}'; it provides {', '.join(cls.get_provided_features_list())}")
        self.path = resolve_weights(name, weights_path, verify_weights, sha256=weights_sha256)
        self._verify, self._sha256 = verify_weights, weights_sha256
        self.name, self.tag = name, TAGS.get(name, re.sub(r"\W", "_", name))
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.seed = seed
        weights_id = f"sha256:{file_sha256(self.path)[:16]}" if self.path is not None else f"init-seed{seed}"
        self.id = f"torch-fidelity:{name}:{cls.__module__}.{cls.__qualname__}:{self.layer}:{weights_id}"
        self._extractor: torch.nn.Module | None = None  # built on first use: all-cached features never load it

    @property
    def extractor(self) -> torch.nn.Module:
        if self._extractor is None:
            from torch_fidelity.utils import create_feature_extractor

            kwargs: dict = {"verbose": False}
            if self.path is not None:
                resolve_weights(self.name, str(self.path), self._verify, sha256=self._sha256)  # unchanged since checked?
                state = load_weights(self.path)  # refuses pickled code before any extractor sees the file
                if _class_name(_torch_fidelity_registry()[self.name]) in STATE_DICT_EXTRACTORS:
                    # torch-fidelity unpickles whatever it is given, without weights_only: give it the
                    # verified tensors, serialized here, never the user's file.
                    buffer = io.BytesIO()
                    torch.save(state, buffer)
                    buffer.seek(0)
                    kwargs["feature_extractor_weights_path"] = buffer
                else:  # a registered extractor is the user's own code: it gets the checked file's path
                    kwargs["feature_extractor_weights_path"] = str(self.path)
                del state
            with torch.random.fork_rng(devices=[]):  # an extractor without a weights file starts the same for a seed
                torch.manual_seed(self.seed)
                extractor = create_feature_extractor(self.name, [self.layer], cuda=False, **kwargs)
            self._extractor = extractor.to(self.device).eval()
        return self._extractor

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        extractor, out = self.extractor, []
        for start in range(0, images.shape[0], self.batch_size):
            batch = self.preprocessing.uint8(images[start : start + self.batch_size]).to(self.device)
            result = extractor.convert_features_tuple_to_dict(extractor(batch))[self.layer]
            out.append(result.reshape(result.shape[0], -1).float().cpu())
        return torch.cat(out)


# -- the domain embedding's options ---------------------------------------
