"""Image sets for metrics: from a folder of image files, or sampled from a generator.

Metrics take :class:`raresynth.ImageSet` objects: float ``(N, C, H, W)`` in ``[-1, 1]``
with optional int64 labels. A synthetic set comes either from a trained generator
(:func:`sample_image_set`) or from files, such as the PNGs ``raresynth sample``
writes (:func:`load_image_folder`). Files go through the data pipeline's own
preprocessing (8-bit values over the full range, channels, crop, resize), so an
image read back from a PNG equals the 8-bit version of the tensor it was written from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, IntensityConfig
from ..data.preprocess import preprocess
from ..errors import ConfigError, DataError, PluginError
from ..interfaces import Generator, ImageSet, PluginParams, RawImage, Record
from ..registry import Registry, get_registry

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
MANIFEST = "manifest.json"


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=lambda p: _natural_key(p.name))


def read_image(path: Path, resolution: int, channels: int, upscale: bool = False) -> np.ndarray:
    """One image file as ``(C, R, R)`` float32 in ``[-1, 1]``, preprocessed as the data pipeline does."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1 and image.format in ("GIF", "PNG", "WEBP"):  # animated, not a camera's MPO
                raise DataError(f"{path}: an animated {image.format} image with {image.n_frames} frames; give still images")
            if image.mode not in ("L", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I"):
                image = image.convert("RGBA" if "A" in image.mode else "RGB")
            pixels = np.asarray(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: cannot read the image ({' '.join(str(exc).split())})") from exc
    config = DataConfig(resolution=resolution, channels=channels, upscale=upscale, intensity=IntensityConfig(mode="dtype"))
    return preprocess(RawImage(pixels=pixels), config, Record(id=path.name, source=path))


def load_image_folder(
    path: str | Path,
    resolution: int,
    channels: int,
    *,
    label: int | None = None,
    class_names: Sequence[str] = (),
    upscale: bool = False,
    name: str = "",
) -> ImageSet:
    """Read a folder of PNG / JPEG / BMP images as an :class:`ImageSet`.

    Labels, in order of precedence:

    * ``manifest.json`` (written by ``raresynth sample``): its ``images`` list gives
      the files, in order, and their ``label`` (class index) when it has one; with
      ``class_names`` given, an entry's ``class_name`` is checked against it.
    * ``label``: one class index for every image (one generator per class).
    * class subfolders (``folder/<class name>/*.png``) when the folder holds no image
      itself: the index of the subfolder's name in ``class_names`` (required then).
    * otherwise the set is unlabelled.

    Every image is resized to ``resolution`` and converted to ``channels`` as the
    training data was; an image smaller than ``resolution`` is an error unless
    ``upscale``.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of images")
    files, labels = _files_and_labels(folder, label, tuple(class_names))
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files)")
    arrays = [read_image(file, resolution, channels, upscale) for file in files]
    tensor_labels = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
    return ImageSet(images=torch.from_numpy(np.stack(arrays)), labels=tensor_labels, name=name or folder.name)


def _files_and_labels(folder: Path, label: int | None, class_names: tuple[str, ...]) -> tuple[list[Path], list[int] | None]:
    files, labels = _listed_files_and_labels(folder, label, class_names)
    return _each_file_once(folder, files, labels)


def _each_file_once(folder: Path, files: list[Path], labels: list[int] | None) -> tuple[list[Path], list[int] | None]:
    """Drop a second path to a file already listed (a symbolic link, a linked class folder): one file, one image.

    The path without links is kept when there is one. A file counted twice would
    weigh twice in a metric and, in a linked class folder, carry another label.
    """
    def has_link(path: Path) -> bool:  # the file, or a folder between it and ``folder``, is a link
        chain = [path, *path.parents]
        return any(p.is_symlink() for p in chain[: chain.index(folder)]) if folder in chain else path.is_symlink()

    chosen: dict[tuple[int, int], int] = {}
    for i, file in enumerate(files):
        info = file.stat()
        key = (info.st_dev, info.st_ino)
        if key not in chosen or (has_link(files[chosen[key]]) and not has_link(file)):
            chosen[key] = i
    keep = sorted(chosen.values())
    if len(keep) == len(files):
        return files, labels
    return [files[i] for i in keep], None if labels is None else [labels[i] for i in keep]


def _listed_files_and_labels(folder: Path, label: int | None, class_names: tuple[str, ...]) -> tuple[list[Path], list[int] | None]:
    manifest_path = folder / MANIFEST
    if manifest_path.is_file():
        return _from_manifest(folder, manifest_path, label, class_names)
    files = _images_in(folder)
    if files:
        return files, [label] * len(files) if label is not None else None
    subfolders = sorted((p for p in folder.iterdir() if p.is_dir() and _images_in(p)), key=lambda p: _natural_key(p.name))
    if not subfolders:
        return [], None
    if label is not None:
        raise ConfigError(f"{folder}: label given, but the images are in class subfolders; give one or the other")
    if not class_names:
        raise ConfigError(f"{folder}: images are in class subfolders ({', '.join(p.name for p in subfolders)}); "
                          "pass class_names (the run's classes, in order) to map them to class indices")
    files, labels = [], []
    for sub in subfolders:
        if sub.name not in class_names:
            raise DataError(f"{sub}: '{sub.name}' is not one of the classes {', '.join(class_names)}")
        found = _images_in(sub)
        files += found
        labels += [class_names.index(sub.name)] * len(found)
    return files, labels


def _from_manifest(folder: Path, manifest_path: Path, label: int | None, class_names: tuple[str, ...]) -> tuple[list[Path], list[int] | None]:
    try:
        entries = json.loads(manifest_path.read_text())["images"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: not a raresynth sample manifest (needs an 'images' list): {exc}") from exc
    files, labels = [], []
    for entry in entries:
        file = folder / entry["file"]
        if not file.is_file():
            raise DataError(f"{file}: listed in {manifest_path.name} but missing")
        files.append(file)
        if "label" in entry:
            index, class_name = int(entry["label"]), entry.get("class_name")
            if class_names and class_name is not None and (index >= len(class_names) or class_names[index] != class_name):
                raise DataError(f"{manifest_path}: {entry['file']} has label {index} ('{class_name}'), which is not class "
                                f"{index} of {', '.join(class_names)}; were these images sampled from another run?")
            labels.append(index)
    if labels and len(labels) != len(files):
        raise DataError(f"{manifest_path}: some images have a label and some do not")
    if labels:
        return files, labels
    return files, [label] * len(files) if label is not None else None


#: How far outside [-1, 1] a sample may stray (rounding of a low-precision tanh, bilinear ringing).
RANGE_TOLERANCE = 1e-3


def check_samples(generator: Generator, images: object, seeds: Sequence[int], labels: torch.Tensor | None = None,
                  registry: Registry | None = None) -> torch.Tensor:
    """Check what ``generator.sample(seeds, labels)`` returned against the output contract; return it.

    The contract (:meth:`raresynth.Generator.sample`): a float tensor shaped
    ``(len(seeds), C, R, R)`` with the data spec's channels and resolution, finite,
    in ``[-1, 1]`` (up to :data:`RANGE_TOLERANCE`). Every path that samples (the loop's
    grids, the metrics' synthetic sets, the benchmark harness, ``raresynth sample``) goes
    through here, so a backend that breaks it fails at its first sample with a
    :class:`PluginError` naming the generator, its plugin and package, and the fix.
    """
    spec = generator.spec
    expected = (len(seeds), spec.channels, spec.resolution, spec.resolution)
    problem = None
    if not isinstance(images, torch.Tensor):
        problem = f"returned a {type(images).__name__}, not a torch.Tensor; return a float tensor shaped {expected}"
    elif not images.is_floating_point():
        problem = f"returned {images.dtype} images; return float images in [-1, 1] (x / 127.5 - 1 for 8-bit values)"
    elif tuple(images.shape) != expected:
        problem = (f"returned images shaped {tuple(images.shape)} for {len(seeds)} seeds; expected (n, C, R, R) = {expected} "
                   f"(data.channels {spec.channels}, data.resolution {spec.resolution}): one image per seed at the spec's size")
    elif labels is not None and len(labels) != len(seeds):
        problem = f"was given {len(labels)} labels for {len(seeds)} seeds"  # the caller's bug, named all the same
    elif images.numel() and not bool(torch.isfinite(images).all()):
        problem = "returned non-finite values (NaN or inf); check the weights and any division or log in sample()"
    elif images.numel():
        low, high = float(images.min()), float(images.max())
        if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
            problem = (f"returned values in [{low:.4g}, {high:.4g}]; images must be in [-1, 1]: rescale "
                       "(x / 127.5 - 1 for 0..255, 2x - 1 for 0..1) or clamp(-1, 1)")
    if problem is not None:
        raise PluginError(f"{(registry or get_registry()).describe(type(generator))}: sample() {problem}")
    return images


@torch.no_grad()
def sample_image_set(
    generator: Generator,
    n: int,
    labels: torch.Tensor | None = None,
    first_seed: int = 1_000_000,
    batch_size: int = 64,
    options: PluginParams | None = None,
    name: str = "synthetic",
) -> ImageSet:
    """Draw ``n`` images from a generator, image ``i`` from seed ``first_seed + i`` (and label ``labels[i]``)."""
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} images")
    images = []
    for start in range(0, n, batch_size):
        seeds = list(range(first_seed + start, first_seed + min(n, start + batch_size)))
        batch_labels = labels[start : start + len(seeds)] if labels is not None else None
        images.append(check_samples(generator, generator.sample(seeds, batch_labels, options), seeds, batch_labels).float().cpu())
    return ImageSet(images=torch.cat(images), labels=labels, name=name)


def concat(sets: Sequence[ImageSet], name: str = "") -> ImageSet:
    """One set from several (for example one synthetic set per class); all labelled or none."""
    if not sets:
        raise ValueError("concat needs at least one image set")
    labelled = [s.labels is not None for s in sets]
    if any(labelled) and not all(labelled):
        raise ConfigError("concat: some image sets have labels and some do not")
    labels = torch.cat([s.labels for s in sets]) if all(labelled) else None
    return ImageSet(images=torch.cat([s.images for s in sets]), labels=labels, name=name or "+".join(s.name for s in sets))


def check_compatible(reference: ImageSet, **others: ImageSet) -> None:
    """Raise :class:`ConfigError` when a set is empty or its images differ in shape from ``reference``."""
    shape = tuple(reference.images.shape[1:])
    if len(reference) == 0:
        raise ConfigError(f"the {reference.name or 'reference'} image set is empty")
    for role, image_set in others.items():
        if len(image_set) == 0:
            raise ConfigError(f"the {role} image set is empty")
        other = tuple(image_set.images.shape[1:])
        if other != shape:
            raise ConfigError(f"the {role} images are {_describe(other)} but the {reference.name or 'training'} images are "
                              f"{_describe(shape)}; load them at the same resolution and channels (e.g. load_image_folder(path, "
                              f"resolution={shape[-1]}, channels={shape[0]}))")


def _describe(shape: tuple[int, ...]) -> str:
    channels, height, width = shape
    return f"{height}x{width} with {channels} channel{'s' if channels != 1 else ''}"


def image_files(path: str | Path, class_names: Sequence[str] = ()) -> list[Path]:
    """The files :func:`load_image_folder` reads from ``path``, in the order of its images."""
    return _files_and_labels(Path(path).expanduser(), None, tuple(class_names))[0]
