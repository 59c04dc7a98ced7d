"""NIfTI volumes (``.nii``, ``.nii.gz``): one image per slice.

Every volume is first reoriented to the closest canonical (RAS+) orientation, so
``axis`` means the same anatomical direction for every file: 0 gives sagittal,
1 coronal and 2 axial slices. Slices are rotated so that superior / anterior is
at the top. All slices of one volume form one group, so the split never puts
slices of one volume on both sides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import nibabel
import numpy as np
from nibabel.filebasedimages import ImageFileError
from pydantic import Field

from raresynth import DataError, DataFormat, PluginParams, RawImage, Record

from ._files import files_to_scan, one_line, readable, relative_id, require_nonempty

AXIS_NAMES = ("x", "y", "z")


def is_nifti_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


class Nifti(DataFormat):
    """NIfTI-1/2 volumes, 3D or 4D."""

    class Params(PluginParams):
        axis: Literal[0, 1, 2] = 2  # slice along this axis of the RAS+ volume (2: axial)
        volume: int = Field(0, ge=0)  # which time point of a 4D file
        skip_empty: bool = True  # leave out slices with a single value (background only)

    description = "NIfTI volumes (.nii, .nii.gz): a file or a folder; one image per slice"

    def __init__(self, params: PluginParams):
        super().__init__(params)
        self._cached_path: Path | None = None  # the last volume loaded, so slices load it once
        self._cached_volume: np.ndarray | None = None

    @classmethod
    def can_read(cls, source: Path) -> bool:
        return readable(source, is_nifti_file)

    def scan(self, source: Path | None) -> list[Record]:
        """One record per (non-empty) slice; a file that cannot be loaded is listed once."""
        root, files, records = files_to_scan(source, is_nifti_file)
        for path in files:
            volume_id = relative_id(path, root)
            try:
                volume = self._volume(path)
            except DataError:
                records.append(Record(id=volume_id, source=path, group=volume_id))  # read() reports why
                continue
            records += self._slice_records(path, volume_id, volume)
        return records

    def _slice_records(self, path: Path, volume_id: str, volume: np.ndarray) -> list[Record]:
        axis = self.params.axis
        slices = np.moveaxis(volume, axis, 0)
        flat = slices.reshape(len(slices), -1)
        keep = flat.max(axis=1) > flat.min(axis=1) if self.params.skip_empty else np.ones(len(slices), dtype=bool)
        name = AXIS_NAMES[axis]
        return [
            Record(id=f"{volume_id}#{name}={i}", source=path, index=i, group=volume_id, meta={"axis": axis, "slice": i})
            for i in np.flatnonzero(keep).tolist()
        ]

    def read(self, record: Record) -> RawImage:
        volume = self._volume(record.source)
        axis = self.params.axis
        index = record.index or 0
        if index >= volume.shape[axis]:
            raise DataError(f"{record.source}: has {volume.shape[axis]} slices along axis {axis}, no slice {index}")
        return RawImage(pixels=np.ascontiguousarray(np.rot90(np.take(volume, index, axis=axis))))

    def _volume(self, path: Path) -> np.ndarray:
        if path != self._cached_path:
            self._cached_volume = _load_volume(path, self.params.volume)
            self._cached_path = path
        return self._cached_volume


def _load_volume(path: Path, time_point: int) -> np.ndarray:
    """The RAS+-oriented 3D volume as float32 (one time point of a 4D file)."""
    require_nonempty(path)
    try:
        image = nibabel.as_closest_canonical(nibabel.load(path))
    except ImageFileError:
        raise DataError(f"{path}: not a NIfTI file") from None
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on damaged files
        raise DataError(f"{path}: truncated or corrupt: {one_line(exc)}") from None
    shape = _without_trailing_singletons(image.shape)
    if len(shape) > 4:
        raise DataError(f"{path}: volume has shape {image.shape}; expected 2D, 3D or 4D")
    if len(shape) == 4 and time_point >= shape[3]:
        raise DataError(f"{path}: has {shape[3]} volumes (time points); data.format_options.volume is {time_point}")
    try:
        if len(image.shape) == len(shape) == 4:  # load only the time point asked for
            volume = np.asarray(image.dataobj[..., time_point])
        else:
            volume = np.asarray(image.dataobj).reshape(shape)
            volume = volume[..., time_point] if volume.ndim == 4 else volume
    except Exception as exc:  # noqa: BLE001 - gzip, EOF and size errors on truncated files
        raise DataError(f"{path}: truncated or corrupt: {one_line(exc)}") from None
    if volume.ndim == 2:
        volume = volume[:, :, None]
    return volume.astype(np.float32, copy=False)


def _without_trailing_singletons(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(64, 64, 30, 1, 1)`` -> ``(64, 64, 30)``: NIfTI pads unused dimensions with 1."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape
