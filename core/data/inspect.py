"""``raresynth data inspect PATH``: what a reader sees in a source, before any training."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from ..config import DataConfig, SplitConfig, format_validation_error
from ..errors import DataError
from ..registry import Registry, get_registry
from .dataset import _format_name, read_record, split_off_skipped
from .formats import resolve_format
from .labels import _natural_key, apply_labels
from .split import group_records

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
    num_groups: int  # groups of the readable images, as the split would see them
    group_by: str  # the effective data.split.group_by
    largest_group: int  # images in the largest group (0 when none is readable)
    group_fallback: int  # readable images without the attribute, grouped by the format's group instead
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
            "group_by": self.group_by,
            "largest_group": self.largest_group,
            "group_fallback": self.group_fallback,
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
            f"images:   {self.num_records} ({self.num_readable} readable)",
            f"groups:   {self.num_groups} by {self.group_by}, the largest of {self.largest_group} image(s)"
            + (f"; {self.group_fallback} image(s) without {self.group_by} grouped by the format's group" if self.group_fallback else ""),
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
    group_by: str | None = None,
) -> InspectReport:
    """Scan ``source`` and read every image (without preprocessing) to summarize it.

    ``group_by`` tries a ``data.split.group_by`` (default: the format's).
    """
    registry = registry or get_registry()
    try:
        split = SplitConfig(group_by=group_by)
    except pydantic.ValidationError as exc:
        raise DataError("; ".join(line.replace("group_by:", "--group-by:", 1) for line in format_validation_error(exc))) from None
    config = DataConfig(format=format, source=str(source), labels=labels, format_options=options or {}, on_bad_file="skip", split=split)
    data_format = resolve_format(config, registry)
    format_name = _format_name(data_format, registry)
    scanned, not_images = split_off_skipped(data_format.scan(Path(config.source).expanduser()))
    records, problems = apply_labels(scanned, config)
    problems = not_images + problems
    sizes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    dtypes: Counter[str] = Counter()
    grouping = group_records(records, config, data_format, format_name)
    readable = []
    for record in records:
        try:
            pixels = np.asarray(read_record(data_format, record, format_name).pixels)
        except DataError as exc:
            problems.append((record.id, str(exc)))
            continue
        readable.append(record.id)
        sizes[f"{pixels.shape[0]}x{pixels.shape[1]}" if pixels.ndim >= 2 else str(pixels.shape)] += 1
        channels[1 if pixels.ndim == 2 else int(pixels.shape[-1])] += 1
        dtypes[str(pixels.dtype)] += 1
    group_sizes = Counter(grouping.keys[record_id] for record_id in readable)
    return InspectReport(
        source=str(source),
        format=format_name,
        format_description=type(data_format).description,
        num_records=len(scanned),
        num_readable=len(readable),
        num_groups=len(group_sizes),
        group_by=grouping.group_by,
        largest_group=max(group_sizes.values(), default=0),
        group_fallback=len(set(grouping.fallback) & set(readable)),
        label_counts=dict(sorted(Counter(r.label for r in records if r.label is not None).items(), key=lambda kv: _natural_key(kv[0]))),
        sizes=dict(sizes.most_common()),
        channels=dict(sorted(channels.items())),
        dtypes=dict(dtypes.most_common()),
        fixed_split=dict(Counter(record.split for record in records if record.split is not None)),
        problems=problems,
    )
