"""The train / held-out split: by group, stratified by label, deterministic for a seed; saved as ``split.json`` and checked on resume."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence

from ..config import SplitConfig
from ..errors import DataError
from ..interfaces import Record
from .preprocess import describe_record

TRAIN, HELD_OUT = "train", "held_out"

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
