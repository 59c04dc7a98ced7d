"""The data pipeline: from a source on disk to train and held-out image tensors.

Formats (plugins) only list and decode images; everything else happens here, the
same way for every format:

1. :func:`resolve_format` picks the format (``format: auto`` asks each one).
2. The format's ``scan`` lists records; labels come from the format, a CSV file,
   or nowhere (:func:`apply_labels`).
3. Each record is read and preprocessed (:func:`preprocess`): intensity to
   ``[0, 1]``, channels, crop or pad to square, resize, then ``[-1, 1]``.
4. :func:`group_records` finds each record's group (``data.split.group_by``: a
   patient by default for DICOM) and :func:`split_records` splits by group,
   stratified by label, deterministically for a seed.

A bad file stops loading with a :class:`DataError` that names it, or, with
``on_bad_file: skip``, is left out and listed in :attr:`Dataset.skipped`. For that
to work, a format's ``scan`` raises only when the whole source is unusable (say,
images next to class folders) and still lists a file it cannot parse, leaving its
``read`` to raise the per-file error. Nothing under ``data.source`` is ever
written: files are opened for reading only.
"""

from __future__ import annotations

import hashlib

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..files import write_text_atomic
from ..interfaces import DataFormat, DataSpec, ImageSet, RawImage, Record
from ..registry import Registry
from .formats import resolve_format
from .labels import apply_labels, class_names_of
from .preprocess import describe_record, preprocess
from .split import FORMAT_GROUP, HELD_OUT, TRAIN, Grouping, group_records, split_records


@dataclass
class Dataset:
    """A loaded dataset: preprocessed train and held-out images, and how they were made."""

    train: ImageSet
    held_out: ImageSet
    spec: DataSpec
    split: dict[str, list[str]]  # {"train": [record ids], "held_out": [record ids]}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id or path, reason)
    format: str = ""
    grouping: Grouping | None = None  # the group of each record (hashed), for split.json

    def content_digests(self) -> dict[str, str]:
        """``{record id: digest of its preprocessed pixels}`` (16 hex digits of SHA-256), for split.json."""
        digests = {}
        for side, images in ((TRAIN, self.train), (HELD_OUT, self.held_out)):
            for record_id, image in zip(self.split[side], images.images):
                digests[record_id] = hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()[:16]
        return digests


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_dataset(config: DataConfig, registry: Registry) -> Dataset:
    """Scan, label, read, preprocess and split ``config.source`` into train and held-out sets."""
    data_format = resolve_format(config, registry)
    format_name = _format_name(data_format, registry)
    source = Path(config.source).expanduser() if config.source else None
    scanned, not_images = split_off_skipped(data_format.scan(source))
    if not scanned:
        first = f"; left out: {not_images[0][1]}" if not_images else ""
        raise DataError(f"{source}: no images found (format {format_name}: {type(data_format).description}){first}")
    _require_unique_ids(scanned, source, format_name)
    records, skipped = apply_labels(scanned, config)
    skipped = not_images + skipped
    grouping = group_records(records, config, data_format, format_name)  # before reading: a bad group_by fails fast
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
    grouping = Grouping(grouping.group_by, {r.id: grouping.keys[r.id] for r in usable}, [i for i in grouping.fallback if i in arrays])
    train, held_out = split_records(usable, config.split, grouping)
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
        grouping=grouping,
    )


def read_record(data_format: DataFormat, record: Record, format_name: str) -> RawImage:
    """``data_format.read(record)``, with any unexpected failure turned into a DataError naming the file."""
    try:
        return data_format.read(record)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's bug or a library error must still name the file
        raise DataError(f"{describe_record(record)}: format '{format_name}' could not read it: {type(exc).__name__}: {exc}") from exc


def split_off_skipped(records: list[Record]) -> tuple[list[Record], list[tuple[str, str]]]:
    """The records to read, and ``(id, reason)`` of those the format listed as skipped (:attr:`Record.skipped`)."""
    kept = [record for record in records if record.skipped is None]
    return kept, [(record.id, f"{record.source}: {record.skipped}") for record in records if record.skipped is not None]


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
    """Write the split as JSON: record ids (paths relative to data.source) and the grouping, no header values.

    ``grouping`` holds the effective ``group_by``, the number of groups on each side,
    how many records lacked the attribute (grouped by the format's group instead)
    and each record's group key, hashed: records with one key share a patient.
    ``content`` holds a digest of each record's preprocessed pixels, so that an image
    replaced under the same name is noticed too.
    """
    path = Path(path)
    content: dict[str, Any] = {"format": dataset.format}
    if dataset.grouping is not None:
        keys = dataset.grouping.saved_keys()
        content["grouping"] = {
            "group_by": dataset.grouping.group_by,
            "groups": {side: len({dataset.grouping.keys[i] for i in dataset.split[side]}) for side in (TRAIN, HELD_OUT)},
            "fallback_to_format_group": len(dataset.grouping.fallback),
            "keys": keys,
        }
    content[TRAIN], content[HELD_OUT] = dataset.split[TRAIN], dataset.split[HELD_OUT]
    content["content"] = dataset.content_digests()
    write_text_atomic(path, json.dumps(content, indent=1) + "\n")


def load_split(path: str | Path) -> dict[str, Any]:
    """What :func:`save_split` wrote: ``{"train": [ids], "held_out": [ids]}``, and ``"grouping"`` when saved."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        saved: dict[str, Any] = {TRAIN: list(content[TRAIN]), HELD_OUT: list(content[HELD_OUT])}
        if "grouping" in content:  # absent in runs started before data.split.group_by
            grouping = content["grouping"]
            saved["grouping"] = {"group_by": str(grouping["group_by"]), "keys": dict(grouping["keys"])}
        if "content" in content:  # absent in runs started before pixel digests were saved
            saved["content"] = {str(k): str(v) for k, v in dict(content["content"]).items()}
        return saved
    except FileNotFoundError:
        raise DataError(f"{path}: saved split not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a valid saved split ({exc}); it is written by raresynth, do not edit it") from None


def check_split(dataset: Dataset, saved: dict[str, Any]) -> None:
    """Raise when the data loaded now is not split, or grouped, as it was when the run started."""
    train_changes = set(dataset.split[TRAIN]) ^ set(saved[TRAIN])
    held_out_changes = set(dataset.split[HELD_OUT]) ^ set(saved[HELD_OUT])
    saved_grouping = saved.get("grouping")
    if train_changes or held_out_changes:
        example = sorted(train_changes or held_out_changes)[0]
        held_out_note = f" and {len(held_out_changes)} held-out images" if held_out_changes else ""
        older = ""
        if saved_grouping is None and dataset.grouping is not None and dataset.grouping.group_by != FORMAT_GROUP:
            older = f" (this run predates data.split.group_by and was split by the format's groups; it is split by {dataset.grouping.group_by} now)"
        raise DataError(
            f"data.source changed since this run started: {len(train_changes)} training images{held_out_note} differ "
            f"(e.g. '{example}'){older}; restore the original data, or start a new run in another run_dir"
        )
    if "content" in saved:
        digests = dataset.content_digests()
        changed = sorted(i for i, digest in saved["content"].items() if digests.get(i, digest) != digest)
        if changed:
            raise DataError(
                f"data.source changed since this run started: {len(changed)} images have other pixels under the same name "
                f"(e.g. '{changed[0]}'), or their preprocessing changed; restore the original data, or start a new run in another run_dir"
            )
    if saved_grouping is None or dataset.grouping is None:
        return
    if saved_grouping["group_by"] != dataset.grouping.group_by:
        raise DataError(
            f"data.split.group_by is {dataset.grouping.group_by} now, but this run was split by {saved_grouping['group_by']}; "
            "set it back, or start a new run in another run_dir"
        )
    keys = dataset.grouping.saved_keys()
    regrouped = sorted(i for i in keys if keys[i] != saved_grouping["keys"].get(i))
    if regrouped:
        raise DataError(
            f"data.source changed since this run started: {len(regrouped)} images are in another group by "
            f"{dataset.grouping.group_by} now (e.g. '{regrouped[0]}'); restore the original data, or start a new run in another run_dir"
        )
