"""Labels: from the format (class folders, NPZ labels), a CSV file, or none (``data.labels``)."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError
from ..interfaces import Record
from .preprocess import describe_record

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
    return _labels_from_csv(records, Path(config.labels).expanduser(), config)


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
    return read_csv_column(path, file_column, label_column, "set data.labels_column")


def read_csv_column(path: Path, file_column: str, value_column: str, fix_column: str) -> dict[str, str]:
    """``{record id: value}`` from two columns of the labels CSV (``data.labels``).

    ``fix_column`` says how to name another value column when ``value_column`` is
    missing. Values are not quoted in errors: a column may hold patient identifiers.
    """
    if not path.is_file():
        raise DataError(f"{path}: labels CSV not found (data.labels)")
    with io.StringIO(_utf8_text(path), newline="") as file:
        reader = csv.DictReader(file)
        columns = reader.fieldnames or []
        for column, fix in ((file_column, "set data.labels_file_column"), (value_column, fix_column)):
            if column not in columns:
                raise DataError(f"{path}: no column '{column}' (columns: {', '.join(columns) or 'none'}); {fix}")
        table: dict[str, str] = {}
        line_of: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            entry = _normalize_id(row[file_column] or "")
            value = (row[value_column] or "").strip()
            if not entry:
                raise DataError(f"{path}: line {line} has an empty '{file_column}'")
            if not value:
                raise DataError(f"{path}: line {line} has an empty '{value_column}' for '{entry}'")
            if table.get(entry, value) != value:
                raise DataError(f"{path}: '{entry}' is listed twice with different '{value_column}' (lines {line_of[entry]} and {line})")
            table[entry] = value
            line_of.setdefault(entry, line)
    return table


def _utf8_text(path: Path) -> str:
    """The CSV file's text: UTF-8, with or without a byte-order mark; a one-line DataError otherwise."""
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); save the labels CSV as UTF-8 "
            "(a spreadsheet's 'CSV UTF-8' export, or: iconv -f latin1 -t utf-8)"
        ) from None


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
