"""NumPy ``.npz`` archives, as MedMNIST ships them.

The MedMNIST layout has ``train_images`` / ``train_labels``, ``val_images`` /
``val_labels`` and ``test_images`` / ``test_labels``; images are ``(N, H, W)`` or
``(N, H, W, 3)`` and labels ``(N, 1)`` or ``(N,)``. A plain ``images`` (and
optional ``labels``) pair works too. With ``use_file_split`` the file's own split
is kept: train and val are training images, test is held out.

Arrays are loaded without pickle (``allow_pickle=False``): an archive that needs
pickle is refused, because unpickling can run arbitrary code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from raresynth import DataError, DataFormat, PluginParams, RawImage, Record

from ._files import one_line, require_nonempty

# (images key, labels key, fixed split) for each part of the MedMNIST layout.
MEDMNIST_PARTS = (
    ("train_images", "train_labels", "train"),
    ("val_images", "val_labels", "train"),
    ("test_images", "test_labels", "held_out"),
)
PLAIN_PART = ("images", "labels", None)


class Npz(DataFormat):
    """A ``.npz`` archive of image arrays, with labels."""

    class Params(PluginParams):
        use_file_split: bool = True  # keep the file's train/val/test split (test is held out)
        class_names: list[str] | None = None  # names for label 0, 1, ...; default: "0", "1", ...

    description = "NumPy .npz archive (MedMNIST layout train/val/test_images and _labels, or images/labels)"

    def __init__(self, params: PluginParams):
        super().__init__(params)
        self._arrays: dict[tuple[Path, str], np.ndarray] = {}  # (file, key) -> loaded array

    @classmethod
    def can_read(cls, source: Path) -> bool:
        return source.is_file() and source.suffix.lower() == ".npz"

    def scan(self, source: Path | None) -> list[Record]:
        if source is None or not source.is_file():
            problem = "is a folder" if source is not None and source.is_dir() else "not found"
            raise DataError(f"{source}: {problem}; the npz format reads one .npz file")
        keys = self._keys(source)
        parts = [part for part in MEDMNIST_PARTS if part[0] in keys] or ([PLAIN_PART] if PLAIN_PART[0] in keys else [])
        if not parts:
            raise DataError(
                f"{source}: no image arrays (found keys {', '.join(sorted(keys)) or 'none'}); expected "
                "train_images / val_images / test_images (MedMNIST) or images"
            )
        records: list[Record] = []
        for images_key, labels_key, split in parts:
            images = self._images(source, images_key)
            labels = self._labels(source, labels_key, len(images)) if labels_key in keys else None
            part = images_key.removesuffix("_images")
            for i in range(len(images)):
                records.append(
                    Record(
                        id=f"{part}#{i}",
                        source=source,
                        index=i,
                        label=None if labels is None else labels[i],
                        split=split if self.params.use_file_split else None,
                        meta={"array": images_key},
                    )
                )
        return records

    def read(self, record: Record) -> RawImage:
        images = self._images(record.source, record.meta["array"])
        return RawImage(pixels=images[record.index])

    # -- loading ------------------------------------------------------------

    def _keys(self, path: Path) -> set[str]:
        require_nonempty(path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                return set(archive.files)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: not a valid .npz archive ({one_line(exc)})") from None

    def _array(self, path: Path, key: str) -> np.ndarray:
        """One array of the archive, loaded once per instance."""
        if (path, key) not in self._arrays:
            try:
                with np.load(path, allow_pickle=False) as archive:
                    self._arrays[(path, key)] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                    raise DataError(
                        f"{path}: array '{key}' holds Python objects, which are not loaded (unpickling can run code); "
                        "save it as a plain numeric array"
                    ) from None
                raise DataError(f"{path}: array '{key}' is truncated or corrupt: {one_line(exc)}") from None
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(f"{path}: array '{key}' is truncated or corrupt: {one_line(exc)}") from None
        return self._arrays[(path, key)]

    def _images(self, path: Path, key: str) -> np.ndarray:
        images = self._array(path, key)
        gray = images.ndim == 3
        color = images.ndim == 4 and images.shape[-1] in (1, 3, 4)
        if not (gray or color) or images.dtype.kind not in "uifb":
            raise DataError(
                f"{path}: '{key}' has shape {images.shape} and dtype {images.dtype}; expected numbers shaped (N, H, W) or (N, H, W, 3)"
            )
        return images

    def _labels(self, path: Path, key: str, count: int) -> list[str]:
        """Class names for each image: the integer label as text, or ``class_names[label]``."""
        labels = self._array(path, key)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or len(labels) != count or labels.dtype.kind not in "iub":
            raise DataError(
                f"{path}: '{key}' has shape {labels.shape} and dtype {labels.dtype}; expected {count} integer class labels "
                f"shaped ({count},) or ({count}, 1) (multi-label data is not supported)"
            )
        names = self.params.class_names
        if names is None:
            return [str(int(label)) for label in labels]
        too_big = [int(label) for label in labels if not 0 <= label < len(names)]
        if too_big:
            raise DataError(
                f"{path}: '{key}' has label {too_big[0]}, but data.format_options.class_names names {len(names)} classes"
            )
        return [names[int(label)] for label in labels]
