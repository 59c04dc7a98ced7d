"""The data pipeline: from a source on disk to train and held-out image tensors.

Formats (plugins) only list and decode images; everything else happens here, the
same way for every format:

1. :func:`resolve_format` picks the format (``format: auto`` asks each one).
2. The format's ``scan`` lists records; labels come from the format, a CSV file,
   or nowhere (:func:`apply_labels`).
3. Each record is read and preprocessed (:func:`preprocess`): intensity to
   ``[0, 1]``, channels, crop or pad to square, resize, then ``[-1, 1]``.
4. :func:`split_records` splits by group (patient, volume, series), stratified by
   label, deterministically for a seed.

A bad file stops loading with a :class:`DataError` that names it, or, with
``on_bad_file: skip``, is left out and listed in :attr:`Dataset.skipped`. For that
to work, a format's ``scan`` raises only when the whole source is unusable (say,
images next to class folders) and still lists a file it cannot parse, leaving its
``read`` to raise the per-file error. Nothing under ``data.source`` is ever
written: files are opened for reading only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import DataConfig, SplitConfig, validate_plugin_params
from .errors import ConfigError, DataError
from .interfaces import DataFormat, DataSpec, ImageSet, RawImage, Record
from .registry import Registry, get_registry

TRAIN, HELD_OUT = "train", "held_out"

# ITU-R BT.601 luma weights for RGB -> gray.
BT601_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class Dataset:
    """A loaded dataset: preprocessed train and held-out images, and how they were made."""

    train: ImageSet
    held_out: ImageSet
    spec: DataSpec
    split: dict[str, list[str]]  # {"train": [record ids], "held_out": [record ids]}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id or path, reason)
    format: str = ""


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


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


def apply_labels(records: list[Record], config: DataConfig) -> tuple[list[Record], list[tuple[str, str]]]:
    """Set each record's label as ``config.labels`` says; return the records kept and those skipped.

    ``none`` drops labels; ``auto`` keeps the format's (all or none); otherwise
    ``config.labels`` is a CSV file mapping record ids to class names.
    """
    if config.labels == "none":
        return [_with_label(record, None) for record in records], []
    if config.labels == "auto":
        unlabelled = [record for record in records if record.label is None]
        if unlabelled and len(unlabelled) < len(records):
            raise DataError(
                f"{describe_record(unlabelled[0])}: has no label while {len(records) - len(unlabelled)} other images do; "
                "give every image a label (or set data.labels: none)"
            )
        return records, []
    return _labels_from_csv(records, Path(config.labels), config)


def _labels_from_csv(records: list[Record], csv_path: Path, config: DataConfig) -> tuple[list[Record], list[tuple[str, str]]]:
    table = read_label_csv(csv_path, config.labels_file_column, config.labels_column)
    record_ids = {record.id for record in records}
    file_ids = {record.id.split("#", 1)[0] for record in records}
    for entry in table:
        if entry not in record_ids and entry not in file_ids:
            raise DataError(f"{csv_path}: names '{entry}', which is not an image in data.source; fix or remove that row")
    kept, skipped = [], []
    for record in records:
        label = table.get(record.id, table.get(record.id.split("#", 1)[0]))
        if label is not None:
            kept.append(_with_label(record, label))
            continue
        reason = f"{csv_path}: has no row for '{record.id}'"
        if config.on_bad_file == "error":
            raise DataError(f"{reason}; add a row for it, or set data.on_bad_file: skip to leave unlabelled images out")
        skipped.append((record.id, reason))
    return kept, skipped


def read_label_csv(path: Path, file_column: str, label_column: str) -> dict[str, str]:
    """``{record id: class name}`` from a CSV file; ids may also name a whole volume file."""
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found (data.labels)")
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        for column, setting in ((file_column, "labels_file_column"), (label_column, "labels_column")):
            if column not in columns:
                raise DataError(f"{path}: no column '{column}' (columns: {', '.join(columns) or 'none'}); set data.{setting}")
        table: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            entry = _normalize_id(row[file_column] or "")
            label = (row[label_column] or "").strip()
            if not entry or not label:
                raise DataError(f"{path}: line {line} has an empty '{file_column}' or '{label_column}'")
            if table.get(entry, label) != label:
                raise DataError(f"{path}: '{entry}' is listed twice with different labels ({table[entry]}, {label})")
            table[entry] = label
    return table


def _normalize_id(entry: str) -> str:
    entry = entry.strip().replace("\\", "/")
    return entry[2:] if entry.startswith("./") else entry


def _with_label(record: Record, label: str | None) -> Record:
    return replace(record, label=label)


def class_names_of(records: Iterable[Record]) -> tuple[str, ...]:
    """The sorted class names (numbers in names compare as numbers: "2" before "10")."""
    return tuple(sorted({r.label for r in records if r.label is not None}, key=_natural_key))


def _natural_key(text: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


# ---------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------


def split_records(records: Sequence[Record], split_config: SplitConfig) -> tuple[list[Record], list[Record]]:
    """Split into (train, held_out) by group, stratified by label, deterministic for a seed.

    Records the source assigns (``record.split``) go to their side, and the rest of
    their group follows them. The other groups (``record.group``, else the record
    id) are ranked per class by a hash of (seed, group), and the first
    ``round(fraction * n_groups)`` are held out (at least one when a class has two
    or more groups, never all). Hashing makes the result independent of the order
    records were scanned in, and a group keeps its side when others are added.
    """
    ordered = sorted(records, key=lambda r: r.id)
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in ordered:
        groups[record.group or record.id].append(record)
    side_of_group: dict[str, str] = {}
    free_groups_by_class: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        fixed = _fixed_side(members)
        if fixed is not None:
            side_of_group[key] = fixed
        else:
            free_groups_by_class[_majority_label(members)].append(key)
    for label in sorted(free_groups_by_class):
        keys = sorted(free_groups_by_class[label], key=lambda key: _split_rank(split_config.seed, key))
        held_out_count = _held_out_count(len(keys), split_config.held_out_fraction)
        for rank, key in enumerate(keys):
            side_of_group[key] = HELD_OUT if rank < held_out_count else TRAIN
    train, held_out = [], []
    for record in ordered:
        side = record.split or side_of_group[record.group or record.id]
        (train if side == TRAIN else held_out).append(record)
    return train, held_out


def _fixed_side(members: list[Record]) -> str | None:
    """The side the source fixes for a group (its first fixed record's), or None."""
    for record in members:
        if record.split is not None:
            if record.split not in (TRAIN, HELD_OUT):
                raise DataError(f"{describe_record(record)}: the format set split '{record.split}'; expected 'train' or 'held_out'")
            return record.split
    return None


def _majority_label(members: list[Record]) -> str:
    """A group's class for stratification: its most common label ("" when unlabelled)."""
    counts = Counter(record.label or "" for record in members)
    return min(counts, key=lambda label: (-counts[label], label))


def _split_rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def _held_out_count(groups: int, fraction: float) -> int:
    if groups < 2:
        return 0
    return min(groups - 1, max(1, round(fraction * groups)))


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_dataset(config: DataConfig, registry: Registry) -> Dataset:
    """Scan, label, read, preprocess and split ``config.source`` into train and held-out sets."""
    data_format = resolve_format(config, registry)
    format_name = _format_name(data_format, registry)
    source = Path(config.source).expanduser() if config.source else None
    scanned = data_format.scan(source)
    if not scanned:
        raise DataError(f"{source}: no images found (format {format_name}: {type(data_format).description})")
    _require_unique_ids(scanned, source, format_name)
    records, skipped = apply_labels(scanned, config)
    # One record after another: formats may cache (a DICOM file's frames, a NIfTI
    # volume) and need not be thread-safe.
    arrays: dict[str, np.ndarray] = {}
    for record in records:
        try:
            arrays[record.id] = preprocess(read_record(data_format, record, format_name), config, record)
        except DataError as exc:
            if config.on_bad_file == "error":
                raise
            skipped.append((record.id, str(exc)))
    usable = [record for record in records if record.id in arrays]
    if not usable:
        raise DataError(f"{source}: none of the {len(scanned)} images could be used; first problem: {skipped[0][1]}")
    train, held_out = split_records(usable, config.split)
    if not train:
        raise DataError(f"{source}: the training split is empty ({len(held_out)} images, all held out by the source's own split)")
    class_names = class_names_of(usable)
    return Dataset(
        train=_image_set(train, arrays, class_names, TRAIN),
        held_out=_image_set(held_out, arrays, class_names, HELD_OUT),
        spec=DataSpec(resolution=config.resolution, channels=config.channels, class_names=class_names, num_train=len(train)),
        split={TRAIN: [r.id for r in train], HELD_OUT: [r.id for r in held_out]},
        skipped=skipped,
        format=format_name,
    )


def read_record(data_format: DataFormat, record: Record, format_name: str) -> RawImage:
    """``data_format.read(record)``, with any unexpected failure turned into a DataError naming the file."""
    try:
        return data_format.read(record)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's bug or a library error must still name the file
        raise DataError(f"{describe_record(record)}: format '{format_name}' could not read it: {type(exc).__name__}: {exc}") from exc


def _format_name(data_format: DataFormat, registry: Registry) -> str:
    return next((name for name in registry.names("data_format") if registry.data_format(name) is type(data_format)), type(data_format).__name__)


def _require_unique_ids(records: list[Record], source: Path | None, format_name: str) -> None:
    counts = Counter(record.id for record in records)
    duplicate = next((record_id for record_id, count in counts.items() if count > 1), None)
    if duplicate is not None:
        raise DataError(f"{source}: format '{format_name}' lists image '{duplicate}' {counts[duplicate]} times; record ids must be unique")


def _image_set(records: list[Record], arrays: dict[str, np.ndarray], class_names: tuple[str, ...], name: str) -> ImageSet:
    if records:
        images = torch.from_numpy(np.stack([arrays[record.id] for record in records]))
    else:
        shape = next(iter(arrays.values())).shape
        images = torch.empty((0, *shape), dtype=torch.float32)
    labels = None
    if class_names:
        index = {class_name: i for i, class_name in enumerate(class_names)}
        labels = torch.tensor([index[record.label] for record in records], dtype=torch.int64)
    return ImageSet(images=images, labels=labels, name=name)


# ---------------------------------------------------------------------------
# The saved split (resuming a run)
# ---------------------------------------------------------------------------


def save_split(dataset: Dataset, path: str | Path) -> None:
    """Write the split as JSON: record ids only (paths relative to data.source), no header values."""
    path = Path(path)
    content = {"format": dataset.format, TRAIN: dataset.split[TRAIN], HELD_OUT: dataset.split[HELD_OUT]}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=1) + "\n")
    os.replace(temporary, path)


def load_split(path: str | Path) -> dict[str, list[str]]:
    """The ``{"train": [...], "held_out": [...]}`` ids :func:`save_split` wrote."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        return {TRAIN: list(content[TRAIN]), HELD_OUT: list(content[HELD_OUT])}
    except FileNotFoundError:
        raise DataError(f"{path}: saved split not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a valid saved split ({exc}); it is written by raresynth, do not edit it") from None


def check_split(dataset: Dataset, saved: dict[str, list[str]]) -> None:
    """Raise when the data loaded now is not split as it was when the run started."""
    train_changes = set(dataset.split[TRAIN]) ^ set(saved[TRAIN])
    held_out_changes = set(dataset.split[HELD_OUT]) ^ set(saved[HELD_OUT])
    if not train_changes and not held_out_changes:
        return
    example = sorted(train_changes or held_out_changes)[0]
    held_out_note = f" and {len(held_out_changes)} held-out images" if held_out_changes else ""
    raise DataError(
        f"data.source changed since this run started: {len(train_changes)} training images{held_out_note} differ "
        f"(e.g. '{example}'); restore the original data, or start a new run in another run_dir"
    )


# ---------------------------------------------------------------------------
# `raresynth data inspect`
# ---------------------------------------------------------------------------


@dataclass
class InspectReport:
    """What a source holds, as ``raresynth data inspect PATH`` shows it."""

    source: str
    format: str
    format_description: str
    num_records: int
    num_readable: int
    num_groups: int
    label_counts: dict[str, int]  # class name -> images; empty when unlabelled
    sizes: dict[str, int]  # "HxW" -> images, most common first
    channels: dict[int, int]  # channel count -> images
    dtypes: dict[str, int]  # numpy dtype name -> images
    fixed_split: dict[str, int]  # "train" / "held_out" -> images the source assigns itself
    problems: list[tuple[str, str]]  # (record id, reason)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for ``--json``."""
        return {
            "source": self.source,
            "format": self.format,
            "format_description": self.format_description,
            "num_records": self.num_records,
            "num_readable": self.num_readable,
            "num_groups": self.num_groups,
            "label_counts": dict(self.label_counts),
            "sizes": dict(self.sizes),
            "channels": {str(k): v for k, v in self.channels.items()},
            "dtypes": dict(self.dtypes),
            "fixed_split": dict(self.fixed_split),
            "problems": [{"record": record_id, "reason": reason} for record_id, reason in self.problems],
        }

    def to_text(self, max_items: int = 5, max_problems: int = 20) -> str:
        """A readable summary, one fact per line."""
        lines = [
            f"source:   {self.source}",
            f"format:   {self.format} ({self.format_description})",
            f"images:   {self.num_records} ({self.num_readable} readable) in {self.num_groups} group(s)",
            f"labels:   {_counts_text(self.label_counts, max_items) if self.label_counts else 'none'}",
            f"sizes:    {_counts_text(self.sizes, max_items)}",
            f"channels: {_counts_text(self.channels, max_items)}",
            f"dtypes:   {_counts_text(self.dtypes, max_items)}",
        ]
        if self.fixed_split:
            lines.append(f"split:    {_counts_text(self.fixed_split, max_items)} (fixed by the source)")
        lines.append(f"problems: {len(self.problems) or 'none'}")
        lines += [f"  {reason}" for _, reason in self.problems[:max_problems]]
        if len(self.problems) > max_problems:
            lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def _counts_text(counts: dict[Any, int], max_items: int) -> str:
    if not counts:
        return "-"
    items = sorted(counts.items(), key=lambda item: -item[1])
    text = ", ".join(f"{key} ({count})" for key, count in items[:max_items])
    return text + (f" and {len(items) - max_items} more" if len(items) > max_items else "")


def inspect_source(
    source: str | Path,
    format: str = "auto",
    registry: Registry | None = None,
    options: dict[str, Any] | None = None,
    labels: str = "auto",
) -> InspectReport:
    """Scan ``source`` and read every image (without preprocessing) to summarize it."""
    registry = registry or get_registry()
    config = DataConfig(format=format, source=str(source), labels=labels, format_options=options or {}, on_bad_file="skip")
    data_format = resolve_format(config, registry)
    format_name = _format_name(data_format, registry)
    scanned = data_format.scan(Path(config.source).expanduser())
    records, problems = apply_labels(scanned, config)
    sizes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    dtypes: Counter[str] = Counter()
    readable = 0
    for record in records:
        try:
            pixels = np.asarray(read_record(data_format, record, format_name).pixels)
        except DataError as exc:
            problems.append((record.id, str(exc)))
            continue
        readable += 1
        sizes[f"{pixels.shape[0]}x{pixels.shape[1]}" if pixels.ndim >= 2 else str(pixels.shape)] += 1
        channels[1 if pixels.ndim == 2 else int(pixels.shape[-1])] += 1
        dtypes[str(pixels.dtype)] += 1
    return InspectReport(
        source=str(source),
        format=format_name,
        format_description=type(data_format).description,
        num_records=len(scanned),
        num_readable=readable,
        num_groups=len({record.group or record.id for record in records}),
        label_counts=dict(sorted(Counter(r.label for r in records if r.label is not None).items(), key=lambda kv: _natural_key(kv[0]))),
        sizes=dict(sizes.most_common()),
        channels=dict(sorted(channels.items())),
        dtypes=dict(dtypes.most_common()),
        fixed_split=dict(Counter(record.split for record in records if record.split is not None)),
        problems=problems,
    )
