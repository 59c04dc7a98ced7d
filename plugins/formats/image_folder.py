"""Ordinary image files: a folder of PNG, JPEG, TIFF or BMP images, or one such file.

Class labels come from the names of the source's immediate subfolders
(``source/benign/a.png`` has label ``benign``). TIFF files are read with
``tifffile`` (16-bit RGB included; every page of a multi-page TIFF is an image),
everything else with Pillow. Files are only ever opened for reading.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from raresynth import DataError, DataFormat, PluginParams, RawImage, Record

from ._files import files_to_scan, one_line, readable, relative_id, require_nonempty

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})  # Pillow's names of formats with animation
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF

# Pillow modes read as they are; every other mode is converted to the one named here.
PILLOW_NATIVE_MODES = frozenset({"L", "I;16", "I;16B", "I;16L", "I", "F", "RGB", "RGBA"})
PILLOW_CONVERSIONS = {"1": "L", "LA": "L", "La": "L", "PA": "RGBA", "RGBa": "RGBA", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def has_tiff_header(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) in TIFF_MAGIC


class ImageFolder(DataFormat):
    """PNG / JPEG / TIFF / BMP files; labels from subfolder names."""

    class Params(PluginParams):
        pass

    description = "PNG, JPEG, TIFF or BMP images (8/16-bit, gray or RGB): one file, or a folder with class subfolders"

    @classmethod
    def can_read(cls, source: Path) -> bool:
        return readable(source, is_image_file)

    def scan(self, source: Path | None) -> list[Record]:
        root, files, records = files_to_scan(source, is_image_file)
        labels = self._labels(files, source) if source.is_dir() else {}
        for path in files:
            record_id = relative_id(path, root)
            label = labels.get(path)
            pages = _tiff_page_count(path) if path.suffix.lower() in TIFF_SUFFIXES else 1
            if pages == 1:
                records.append(Record(id=record_id, source=path, label=label))
                continue
            for page in range(pages):
                records.append(
                    Record(id=f"{record_id}#page={page}", source=path, index=page, label=label, group=record_id, meta={"page": page})
                )
        return records

    @staticmethod
    def _labels(files: list[Path], root: Path) -> dict[Path, str]:
        """Each file's class: the name of its immediate subfolder of ``root``.

        Images directly in ``root`` mean the folder is unlabelled, which contradicts
        class subfolders next to them.
        """
        in_root = [path for path in files if path.parent == root]
        nested = [path for path in files if path.parent != root]
        if not nested:
            return {}
        if in_root:
            classes = sorted({path.relative_to(root).parts[0] for path in nested})
            raise DataError(
                f"{root}: {len(in_root)} image(s) directly in the folder (e.g. {in_root[0].name}) next to class "
                f"subfolders ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); move every image into a class "
                "subfolder, or all into the root for unlabelled data"
            )
        return {path: path.relative_to(root).parts[0] for path in nested}

    def read(self, record: Record) -> RawImage:
        path = record.source
        require_nonempty(path)
        if has_tiff_header(path):
            pixels = _read_tiff_page(path, record.index or 0)
        else:
            pixels = _read_with_pillow(path)
        return RawImage(pixels=pixels)


def _tiff_page_count(path: Path) -> int:
    """Pages in a TIFF; 1 when the file cannot be opened, so that ``read`` reports why."""
    try:
        if path.stat().st_size == 0 or not has_tiff_header(path):
            return 1
        with tifffile.TiffFile(path) as tif:
            return max(1, len(tif.pages))
    except Exception:  # noqa: BLE001 - reported by read()
        return 1


def _read_tiff_page(path: Path, index: int) -> np.ndarray:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[index]
            pixels = page.asarray()
            axes = page.axes
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds on damaged files
        raise DataError(f"{path}: truncated or corrupt: {one_line(exc)}") from None
    if pixels.ndim == 3 and axes.startswith("S"):  # planar RGB: samples first
        pixels = np.moveaxis(pixels, 0, -1)
    pixels = np.squeeze(pixels, axis=tuple(range(pixels.ndim - 3))) if pixels.ndim > 3 else pixels
    if pixels.ndim not in (2, 3):
        raise DataError(f"{path}: TIFF page {index} has axes {axes} (shape {pixels.shape}); expected a 2D gray or color image")
    return pixels


def _read_with_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            # An animated GIF / PNG / WebP (perhaps renamed): which frame is the image is not ours to guess. (A
            # camera's MPO JPEG also has several frames, the first the photo: read as before.)
            if frames > 1 and image.format in ANIMATED_FORMATS:
                raise DataError(f"{path}: an animated {image.format} image with {frames} frames; raresynth reads still images: "
                                "save the frame you want as its own file")
            image.load()
            return _pillow_to_array(image)
    except DataError:
        raise
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a PNG/JPEG/TIFF image (no known image format in its content)") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on damaged files
        raise DataError(f"{path}: truncated or corrupt: {one_line(exc)}") from None


def _pillow_to_array(image: Image.Image) -> np.ndarray:
    """Pixels in a mode numpy understands: gray (8/16/32-bit, float), RGB or RGBA."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode not in PILLOW_NATIVE_MODES:
        image = image.convert(PILLOW_CONVERSIONS.get(image.mode, "RGB"))
    pixels = np.asarray(image)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)
