"""Preprocessing one image, the same for every format: intensity to ``[0, 1]``, channels, crop or pad to square, resize, then ``[-1, 1]``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import DataError
from ..interfaces import RawImage, Record

# ITU-R BT.601 luma weights for RGB -> gray.
BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# ---------------------------------------------------------------------------
# Preprocessing one image
# ---------------------------------------------------------------------------


def preprocess(raw: RawImage, config: DataConfig, record: Record) -> np.ndarray:
    """Turn raw pixels into a ``(C, R, R)`` float32 array in ``[-1, 1]`` (R = resolution).

    Steps: drop alpha; intensity to ``[0, 1]`` (:func:`normalize_intensity`);
    channels to ``config.channels``; crop or pad to square; resize; map to ``[-1, 1]``.
    """
    where = describe_record(record)
    pixels = _drop_alpha(_as_hwc(raw.pixels, where))
    unit = normalize_intensity(pixels, raw.window, config, where)
    unit = _to_channels(unit, config.channels, where)
    height, width = unit.shape[:2]
    square = _crop_to_square(unit) if config.fit == "crop" else _pad_to_square(unit)
    side = square.shape[0]
    if side < config.resolution and not config.upscale:
        raise DataError(
            f"{where}: image is {height}x{width}, smaller than data.resolution {config.resolution}; "
            "set data.upscale: true to upscale it or lower data.resolution"
        )
    resized = _resize(square, config.resolution)
    return resized * 2.0 - 1.0


def describe_record(record: Record) -> str:
    """The file a record comes from, with its frame / slice when there is one (for messages)."""
    if record.index is None:
        return str(record.source)
    file_part, _, part = record.id.rpartition("#")
    if not file_part.endswith(record.source.name):  # e.g. "train#3" in an .npz: keep the whole id
        part = record.id
    return f"{record.source} [{part}]"


def _as_hwc(pixels: np.ndarray, where: str) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        return pixels[:, :, None]
    if pixels.ndim == 3:
        return pixels
    raise DataError(f"{where}: pixel array has shape {pixels.shape}; expected (H, W) or (H, W, C)")


def _drop_alpha(pixels: np.ndarray) -> np.ndarray:
    """Gray+alpha -> gray, RGBA -> RGB: transparency is not part of the image's content."""
    channels = pixels.shape[2]
    return pixels[:, :, : channels - 1] if channels in (2, 4) else pixels


def normalize_intensity(pixels: np.ndarray, file_window: tuple[float, float] | None, config: DataConfig, where: str) -> np.ndarray:
    """Map raw values to float32 ``[0, 1]`` as ``config.intensity.mode`` says.

    * ``dtype``: the full range of the integer type (uint8 / 255, uint16 / 65535);
      floats are taken to be in ``[0, 1]`` already and clipped.
    * ``minmax``: the image's own minimum and maximum.
    * ``percentile``: the image's low and high percentiles, clipped outside.
    * ``window``: ``center -/+ width / 2`` from the config, or else from the file.
    * ``auto``: ``dtype`` for uint8, ``window`` when the file has one, else ``percentile``.
    """
    intensity = config.intensity
    mode = intensity.mode
    if mode == "auto":
        mode = "dtype" if pixels.dtype == np.uint8 else "window" if file_window is not None else "percentile"
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    if mode == "dtype":
        return _scale_by_dtype(pixels)
    values = _finite(pixels.astype(np.float32, copy=False), where)
    if mode == "minmax":
        return _rescale(values, float(values.min()), float(values.max()))
    if mode == "percentile":
        low, high = (float(v) for v in np.percentile(values, intensity.percentiles))
        if high <= low:  # mostly one value (e.g. background): fall back to the full range
            low, high = float(values.min()), float(values.max())
        return _rescale(values, low, high)
    window = intensity.window or file_window
    if window is None:
        raise DataError(f"{where}: data.intensity.mode is 'window' but the file has no window; set data.intensity.window: [center, width]")
    center, width = window
    return _rescale(values, center - width / 2, center + width / 2)


def _scale_by_dtype(pixels: np.ndarray) -> np.ndarray:
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        return ((pixels.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
    return np.clip(np.nan_to_num(pixels.astype(np.float32), nan=0.0), 0.0, 1.0)


def _finite(values: np.ndarray, where: str) -> np.ndarray:
    """Replace NaN and infinities with the smallest finite value (NIfTI masks often hold NaN)."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    if not finite.any():
        raise DataError(f"{where}: image has no finite pixel values (all NaN or infinite)")
    return np.where(finite, values, values[finite].min())


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``low`` -> 0, ``high`` -> 1, clipped; a constant image (``high == low``) becomes 0."""
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32, copy=False)


def _to_channels(unit: np.ndarray, channels: int, where: str) -> np.ndarray:
    have = unit.shape[2]
    if have == channels:
        return unit
    if have == 3 and channels == 1:
        return (unit @ BT601_LUMA)[:, :, None]
    if have == 1 and channels == 3:
        return np.repeat(unit, 3, axis=2)
    raise DataError(f"{where}: image has {have} channels; raresynth reads gray (1), RGB (3) or RGBA (4) images")


def _crop_to_square(unit: np.ndarray) -> np.ndarray:
    height, width = unit.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return unit[top : top + side, left : left + side]


def _pad_to_square(unit: np.ndarray) -> np.ndarray:
    """Pad with 0, the minimum after normalization (-1 in the output)."""
    height, width = unit.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return np.pad(unit, ((top, side - height - top), (left, side - width - left), (0, 0)))


def _resize(square: np.ndarray, resolution: int) -> np.ndarray:
    """Bilinear resize to ``resolution``; antialiased when shrinking. Returns ``(C, R, R)``."""
    tensor = torch.from_numpy(np.ascontiguousarray(square.transpose(2, 0, 1), dtype=np.float32))
    if square.shape[0] != resolution:
        shrinking = square.shape[0] > resolution
        tensor = F.interpolate(tensor[None], size=(resolution, resolution), mode="bilinear", antialias=shrinking, align_corners=False)[0]
    return tensor.clamp(0.0, 1.0).numpy()
