"""The embedded dataset: labelled crops of the medical images scikit-image ships.

raresynth's default job and its tests need a small labelled medical dataset that
needs no network and no files from the user. scikit-image's wheel carries a few
real medical images; this module cuts many square crops out of them, one class
per source image:

``fundus``
    ``skimage.data.retina()``, the file ``skimage/data/retina.jpg``: a colour
    fundus photograph of a normal left eye, 1411 x 1411 RGB, with a black
    background outside the circular field of view. scikit-image took it from
    Wikimedia Commons ("Fundus photograph of normal left eye", Mikael Häggström,
    *Medical gallery of Mikael Häggström 2014*, WikiJournal of Medicine 1(2),
    doi:10.15347/wjm/2014.008) and documents it as released under the
    Creative Commons CC0 1.0 Universal Public Domain Dedication.
``histology``
    ``skimage.data.immunohistochemistry()``, the file ``skimage/data/ihc.png``:
    colonic glands, immunohistochemical (IHC) staining of the FHL2 protein with
    DAB and a hematoxylin counterstain, 512 x 512 RGB, acquired at the Center for
    Microscopy And Molecular Imaging (CMMI). scikit-image documents it as having
    no known copyright restrictions.

Two other offline images were left out on purpose: ``skimage.data.cell()`` is a
quantitative phase image of a single cell in saline, so almost every crop would be
featureless background and the cell itself could only land in one split;
``skimage.data.microaneurysms()`` is a 102 x 102 patch, too small for two disjoint
regions of useful crops. Images that scikit-image fetches from the network
(``skin()`` and others) are never used.

Held-out crops are truly unseen: each source image is split along its rows into a
training region (top) and a held-out region (bottom, ``held_out_fraction_of_area``
of the rows), with a band of ``crop_size // 4`` rows between them that belongs to
neither. Every crop lies wholly inside one region, so no held-out crop shares, or
even touches, a pixel of any training crop. Crops whose pixels are more than 10%
near-black (the retina's background) are never drawn. Crop positions are drawn at
random from every position that qualifies, by a generator seeded from the
``seed`` option, the class name and the split: the same options always give the
same crops, and adding a class does not move the crops of another.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from raresynth import DataError, DataFormat, PluginParams, RawImage, Record, did_you_mean

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open, in source pixels

#: A pixel is background when its brightest channel is below this (the retina's
#: black surround is 0-15 with JPEG noise; the fundus itself is far brighter).
NEAR_BLACK = 20
#: A crop is rejected when more than this fraction of its pixels are background.
MAX_BACKGROUND_FRACTION = 0.10

SPLITS = ("train", "held_out")


@dataclass(frozen=True)
class SourceImage:
    """One image scikit-image ships, cut into the crops of one class."""

    name: str  # the ``skimage.data`` function that loads it, e.g. "retina"
    filename: str  # its file inside the ``skimage/data`` folder
    shape: tuple[int, ...]  # (H, W, 3) or (H, W); checked when it is loaded

    @property
    def path(self) -> Path:
        """Where the file lies inside the installed scikit-image package."""
        import skimage.data

        return Path(skimage.data.__file__).parent / self.filename

    def load(self) -> np.ndarray:
        """The image as scikit-image returns it, read-only; :class:`DataError` if unusable."""
        try:
            import skimage.data

            pixels = np.asarray(getattr(skimage.data, self.name)())
        except Exception as exc:  # noqa: BLE001 - any failure means the same to the user
            raise DataError(f"{self.path}: cannot load scikit-image's sample image '{self.name}': {exc}") from exc
        if pixels.shape != self.shape or pixels.dtype != np.uint8:
            raise DataError(
                f"{self.path}: scikit-image's '{self.name}' is {pixels.shape} {pixels.dtype}, expected "
                f"{self.shape} uint8; this scikit-image version ships a different image"
            )
        pixels.flags.writeable = False
        return pixels


#: The classes this format provides, each cut from one source image.
CLASSES: dict[str, SourceImage] = {
    "fundus": SourceImage(name="retina", filename="retina.jpg", shape=(1411, 1411, 3)),
    "histology": SourceImage(name="immunohistochemistry", filename="ihc.png", shape=(512, 512, 3)),
}
_BY_IMAGE_NAME = {source.name: source for source in CLASSES.values()}


# ---------------------------------------------------------------------------
# Geometry: disjoint training and held-out regions
# ---------------------------------------------------------------------------


def gap_rows(crop_size: int) -> int:
    """Rows between the two regions that belong to neither (a quarter crop)."""
    return crop_size // 4


def split_regions(height: int, width: int, held_out_fraction: float, crop_size: int) -> dict[str, Box]:
    """The training region (top rows) and held-out region (bottom rows) of an image.

    The held-out region is the bottom ``round(height * held_out_fraction)`` rows;
    the training region ends :func:`gap_rows` rows above it. Boxes are
    ``(y0, x0, y1, x1)``, half-open; a region may be empty when the image is too
    small (see :func:`max_crop_size`).
    """
    held_rows = round(height * held_out_fraction)
    train_end = max(0, height - held_rows - gap_rows(crop_size))
    return {"train": (0, 0, train_end, width), "held_out": (height - held_rows, 0, height, width)}


def crop_fits(height: int, width: int, held_out_fraction: float, crop_size: int) -> bool:
    """Whether a ``crop_size`` square fits in both regions of an image."""
    regions = split_regions(height, width, held_out_fraction, crop_size)
    return all(y1 - y0 >= crop_size and x1 - x0 >= crop_size for y0, x0, y1, x1 in regions.values())


def max_crop_size(height: int, width: int, held_out_fraction: float) -> int:
    """The largest crop that fits in both regions of an image (0 if none does)."""
    for crop_size in range(min(height, width), 0, -1):
        if crop_fits(height, width, held_out_fraction, crop_size):
            return crop_size
    return 0


# ---------------------------------------------------------------------------
# Sampling crop positions
# ---------------------------------------------------------------------------


def background_mask(image: np.ndarray) -> np.ndarray:
    """True where a pixel is near-black (its brightest channel below :data:`NEAR_BLACK`)."""
    brightest = image.max(axis=-1) if image.ndim == 3 else image
    return brightest < NEAR_BLACK


def foreground_positions(image: np.ndarray, region: Box, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(ys, xs)`` of every crop inside ``region`` that is not mostly background.

    Counts background pixels of every candidate crop at once with a summed-area
    table, so the whole region is searched rather than sampled by trial and error.
    """
    y0, x0, y1, x1 = region
    if y1 - y0 < crop_size or x1 - x0 < crop_size:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    mask = background_mask(image)
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    ys = np.arange(y0, y1 - crop_size + 1)
    xs = np.arange(x0, x1 - crop_size + 1)
    top, bottom = ys[:, None], ys[:, None] + crop_size
    left, right = xs[None, :], xs[None, :] + crop_size
    counts = table[bottom, right] - table[top, right] - table[bottom, left] + table[top, left]
    rows, cols = np.nonzero(counts <= MAX_BACKGROUND_FRACTION * crop_size * crop_size)
    return ys[rows], xs[cols]


def sample_boxes(image: np.ndarray, region: Box, crop_size: int, count: int, rng: np.random.Generator) -> list[Box]:
    """``count`` distinct crop boxes inside ``region``, drawn uniformly from the qualifying ones.

    Raises ``ValueError`` when fewer than ``count`` positions qualify.
    """
    ys, xs = foreground_positions(image, region, crop_size)
    if len(ys) < count:
        raise ValueError(f"only {len(ys)} positions for a {crop_size}-pixel crop are not mostly background, {count} needed")
    chosen = rng.choice(len(ys), size=count, replace=False)
    return [(int(ys[i]), int(xs[i]), int(ys[i]) + crop_size, int(xs[i]) + crop_size) for i in chosen]


def crop_rng(seed: int, class_name: str, split: str) -> np.random.Generator:
    """The generator for one class and split: independent of which other classes are chosen."""
    return np.random.default_rng([seed, zlib.crc32(class_name.encode()), SPLITS.index(split)])


# ---------------------------------------------------------------------------
# The data format
# ---------------------------------------------------------------------------


class EmbeddedMedical(DataFormat):
    """Labelled crops of scikit-image's fundus photo and IHC histology image; no download.

    ``scan`` ignores ``data.source`` and fixes each record's split ("train" or
    "held_out"), with training and held-out crops cut from disjoint regions of each
    source image (see the module docstring for sources, licences and the split).
    ``read`` returns the crop as uint8, ``(crop_size, crop_size, 3)``; the core
    resizes it to ``data.resolution`` and converts channels as the config asks.
    """

    description: ClassVar[str] = "Built-in labelled demo set: fundus and histology crops cut from scikit-image's sample images (no download)"
    needs_source: ClassVar[bool] = False

    class Params(PluginParams):
        classes: list[str] = Field(default=["fundus", "histology"], description="Classes to include, one per source image.")
        train_per_class: int = Field(150, ge=1, description="Training crops per class.")
        held_out_per_class: int = Field(30, ge=1, description="Held-out crops per class.")
        held_out_fraction_of_area: float = Field(0.25, gt=0, lt=1, description="Share of each source image's rows kept for held-out crops.")
        crop_size: int = Field(128, ge=8, description="Side of the square crops, in source pixels.")
        seed: int = Field(0, ge=0, description="Seed of the crop positions.")

        @field_validator("classes")
        @classmethod
        def _known_classes(cls, classes: list[str]) -> list[str]:
            available = ", ".join(CLASSES)
            if not classes:
                raise ValueError(f"choose at least one class; available classes: {available}")
            for name in classes:
                if name not in CLASSES:
                    raise ValueError(f"unknown class '{name}'; available classes: {available}.{did_you_mean(name, CLASSES)}")
            duplicates = sorted({name for name in classes if classes.count(name) > 1})
            if duplicates:
                raise ValueError(f"class '{duplicates[0]}' is listed twice")
            return classes

        # Field order matters: ``classes`` and ``held_out_fraction_of_area`` are
        # validated before ``crop_size``, so ``info.data`` holds them when valid.
        @field_validator("crop_size")
        @classmethod
        def _crop_fits(cls, crop_size: int, info: ValidationInfo) -> int:
            classes = info.data.get("classes")
            fraction = info.data.get("held_out_fraction_of_area")
            if classes is None or fraction is None:
                return crop_size  # those fields have their own errors
            for name in classes:
                height, width = CLASSES[name].shape[:2]
                if not crop_fits(height, width, fraction, crop_size):
                    largest = max_crop_size(height, width, fraction)
                    raise ValueError(
                        f"crop_size {crop_size} does not fit the training and held-out regions of class '{name}' "
                        f"({height}x{width} source image, held_out_fraction_of_area={fraction}); "
                        f"the maximum is {largest}"
                    )
            return crop_size

    def __init__(self, params: PluginParams):
        super().__init__(params)
        self._images: dict[str, np.ndarray] = {}  # source image name -> pixels, loaded once

    def _image(self, source: SourceImage) -> np.ndarray:
        if source.name not in self._images:
            self._images[source.name] = source.load()
        return self._images[source.name]

    def scan(self, source: Path | None) -> list[Record]:
        """One record per crop, classes in the order of ``classes``; ``source`` is ignored."""
        params = self.params
        counts = {"train": params.train_per_class, "held_out": params.held_out_per_class}
        records: list[Record] = []
        for class_name in params.classes:
            image_source = CLASSES[class_name]
            image = self._image(image_source)
            height, width = image.shape[:2]
            regions = split_regions(height, width, params.held_out_fraction_of_area, params.crop_size)
            for split in SPLITS:
                rng = crop_rng(params.seed, class_name, split)
                try:
                    boxes = sample_boxes(image, regions[split], params.crop_size, counts[split], rng)
                except ValueError as exc:
                    raise DataError(
                        f"{image_source.path}: class '{class_name}', {split} region: {exc}; "
                        f"lower crop_size or {split}_per_class"
                    ) from None
                for i, box in enumerate(boxes):
                    record_id = f"{class_name}/{split}/{i:04d}"
                    records.append(
                        Record(
                            id=record_id,
                            source=image_source.path,
                            label=class_name,
                            group=record_id,
                            split=split,
                            meta={"box": list(box), "source_image": image_source.name},
                        )
                    )
        return records

    def read(self, record: Record) -> RawImage:
        """The crop's pixels: uint8, ``(H, W, 3)`` for RGB sources, ``(H, W)`` for grayscale ones."""
        image_source = _BY_IMAGE_NAME.get(record.meta.get("source_image", ""))
        box = record.meta.get("box")
        if image_source is None or box is None or len(box) != 4:
            raise DataError(
                f"{record.source}: record '{record.id}' was not made by the embedded format "
                f"(its meta needs 'source_image' and 'box')"
            )
        image = self._image(image_source)
        y0, x0, y1, x1 = (int(v) for v in box)
        if not (0 <= y0 < y1 <= image.shape[0] and 0 <= x0 < x1 <= image.shape[1]):
            raise DataError(f"{record.source}: record '{record.id}' has box {box}, outside the {image.shape[0]}x{image.shape[1]} image")
        return RawImage(pixels=image[y0:y1, x0:x1].copy())
