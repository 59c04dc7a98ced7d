"""The train / held-out split: by group, stratified by label, deterministic for a seed; saved as ``split.json`` and checked on resume.

A group is what must never be on both sides: a patient. ``data.split.group_by``
says how to find it (:func:`group_records`): a header attribute the format exposes
(DICOM ``PatientID``, the DICOM default), ``column:NAME`` of the labels CSV,
``regex:PATTERN`` on the record id, or ``format`` (the format's own
``Record.group``: a DICOM series, a NIfTI volume, a file). The value found is
hashed at once (salted SHA-256) and only the hash is kept, in memory and in
``split.json``, so no patient identifier is ever written by a run.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import DataConfig, SplitConfig
from ..errors import DataError
from ..interfaces import DataFormat, Record
from .labels import read_csv_column
from .preprocess import describe_record

TRAIN, HELD_OUT = "train", "held_out"
FORMAT_GROUP = "format"  # group_by: the format's own Record.group
# Salts keep the hashes raresynth stores from matching plain SHA-256 tables of IDs.
# They are public, so they do not stop someone who can guess an ID from testing it:
# treat split.json like the list of file names it also holds.
_GROUP_SALT = b"raresynth split group v1\0"
_SAVED_SALT = b"raresynth saved group v1\0"

# ---------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------


@dataclass
class Grouping:
    """The group of each record, as ``data.split.group_by`` found it."""

    group_by: str  # the effective setting: "PatientID", "column:patient", "regex:...", "format"
    keys: dict[str, str]  # record id -> group key (a salted hash of the value, never the value)
    fallback: list[str] = field(default_factory=list)  # record ids without the attribute, grouped by the format's group

    def key(self, record: Record) -> str:
        return self.keys[record.id]

    def saved_keys(self) -> dict[str, str]:
        """``{record id: hash of its group key}`` as ``split.json`` holds it."""
        return {record_id: saved_group_key(key) for record_id, key in sorted(self.keys.items())}


def effective_group_by(split_config: SplitConfig, data_format: DataFormat) -> str:
    """``data.split.group_by``, or the format's default when unset."""
    return split_config.group_by or type(data_format).default_group_by or FORMAT_GROUP


def group_records(records: Sequence[Record], config: DataConfig, data_format: DataFormat, format_name: str) -> Grouping:
    """The group of every record under ``config.split.group_by`` (or the format's default).

    Raises a DataError naming the setting for a record whose group cannot be found:
    an id the regex does not match, a file the CSV column has no value for, an
    attribute the format does not have.
    """
    group_by = effective_group_by(config.split, data_format)
    kind, colon, argument = group_by.partition(":")
    if group_by == FORMAT_GROUP:
        return Grouping(group_by, {record.id: format_group(record) for record in records})
    if colon and kind == "column":
        return Grouping(group_by, _column_groups(records, config, argument))
    if colon and kind == "regex":
        return Grouping(group_by, _regex_groups(records, argument))
    return _attribute_groups(records, data_format, format_name, group_by)


def format_group(record: Record) -> str:
    """The format's own group of a record (its file when the format sets none)."""
    return record.group or record.id


def saved_group_key(key: str) -> str:
    """The hash of a group key that ``split.json`` holds (16 hex digits)."""
    return hashlib.sha256(_SAVED_SALT + key.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _hashed(group_by: str, value: str) -> str:
    return hashlib.sha256(_GROUP_SALT + f"{group_by}\0{value}".encode("utf-8", "surrogateescape")).hexdigest()


def _column_groups(records: Sequence[Record], config: DataConfig, column: str) -> dict[str, str]:
    setting = f"data.split.group_by: column:{column}"
    if config.labels in ("auto", "none"):
        raise DataError(f"{setting} reads a column of the labels CSV, but data.labels is '{config.labels}'; set data.labels to the CSV file")
    csv_path = Path(config.labels)
    table = read_csv_column(csv_path, config.labels_file_column, column, "name one of them in data.split.group_by: column:NAME")
    keys = {}
    for record in records:
        value = table.get(record.id, table.get(record.id.split("#", 1)[0]))
        if value is None:
            raise DataError(f"{csv_path}: column '{column}' has no group for '{record.id}' ({setting}); add a row for that file")
        keys[record.id] = _hashed(f"column:{column}", value)
    return keys


def _regex_groups(records: Sequence[Record], pattern: str) -> dict[str, str]:
    compiled = re.compile(pattern)
    keys = {}
    for record in records:
        match = compiled.search(record.id)
        if match is None or not match.group(1):
            what = "does not match" if match is None else "captures nothing from"
            raise DataError(
                f"data.split.group_by: regex:{pattern} {what} the record id '{record.id}'; "
                "it must capture a group from every id (ids are paths relative to data.source)"
            )
        keys[record.id] = _hashed(f"regex:{pattern}", match.group(1))
    return keys


def _attribute_groups(records: Sequence[Record], data_format: DataFormat, format_name: str, attribute: str) -> Grouping:
    if type(data_format).attribute_value is DataFormat.attribute_value:
        raise DataError(
            f"data.split.group_by: '{attribute}' is a header attribute, and format '{format_name}' has no headers; "
            "use column:NAME (a column of the labels CSV), regex:PATTERN (on the record id) or format"
        )
    grouping = Grouping(attribute, {})
    for record in records:
        try:
            value = data_format.attribute_value(record, attribute)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must still name the file
            raise DataError(f"{describe_record(record)}: format '{format_name}' could not read its {attribute}: {type(exc).__name__}: {exc}") from exc
        if value is None:
            grouping.keys[record.id] = format_group(record)
            grouping.fallback.append(record.id)
        else:
            grouping.keys[record.id] = _hashed(attribute, value)
    return grouping


# ---------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------


def split_records(records: Sequence[Record], split_config: SplitConfig, grouping: Grouping | None = None) -> tuple[list[Record], list[Record]]:
    """Split into (train, held_out) by group, stratified by label, deterministic for a seed.

    Groups come from ``grouping`` (:func:`group_records`), else from the format
    (``record.group``, else the record id). Records the source assigns
    (``record.split``) go to their side, and the rest of their group follows them.
    The other groups are ranked per class by a hash of (seed, group), and the first
    ``round(fraction * n_groups)`` are held out (at least one when a class has two
    or more groups, never all). Hashing makes the result independent of the order
    records were scanned in, and a group keeps its side when others are added. No
    group is ever on both sides.
    """
    key_of = grouping.key if grouping is not None else format_group
    ordered = sorted(records, key=lambda r: r.id)
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in ordered:
        groups[key_of(record)].append(record)
    side_of_group: dict[str, str] = {}
    free_groups_by_class: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        fixed = _fixed_side(members, grouping)
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
        (train if side_of_group[key_of(record)] == TRAIN else held_out).append(record)
    return train, held_out


def _fixed_side(members: list[Record], grouping: Grouping | None) -> str | None:
    """The side the source fixes for a group, or None; a group the source puts on both sides is an error."""
    fixed = [record for record in members if record.split is not None]
    for record in fixed:
        if record.split not in (TRAIN, HELD_OUT):
            raise DataError(f"{describe_record(record)}: the format set split '{record.split}'; expected 'train' or 'held_out'")
    other = next((record for record in fixed if record.split != fixed[0].split), None)
    if other is not None:
        setting = f"data.split.group_by: {grouping.group_by}" if grouping is not None else "the format's groups"
        raise DataError(
            f"{setting} puts '{fixed[0].id}' and '{other.id}' in one group, but the source fixes them to "
            f"{fixed[0].split} and {other.split}; choose another group_by, or turn off the source's own split"
        )
    return fixed[0].split if fixed else None


def _majority_label(members: list[Record]) -> str:
    """A group's class for stratification: its most common label ("" when unlabelled)."""
    counts = Counter(record.label or "" for record in members)
    return min(counts, key=lambda label: (-counts[label], label))


def _split_rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode("utf-8", "surrogateescape")).hexdigest()


def _held_out_count(groups: int, fraction: float) -> int:
    if groups < 2:
        return 0
    return min(groups - 1, max(1, round(fraction * groups)))
