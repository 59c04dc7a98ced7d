"""The data wing: from a source on disk to train and held-out image tensors.

``formats`` picks the reader, ``labels`` labels the records, ``preprocess`` turns one
decoded image into the run's tensor, ``split`` divides by group, ``dataset`` runs the
whole pipeline (:func:`load_dataset`), ``inspect`` is ``raresynth data inspect``, and
``images`` writes sample grids. The names below are the wing's entry points.
"""

from .dataset import Dataset, check_split, load_dataset, load_split, save_split
from .formats import resolve_format
from .images import save_grid, to_uint8
from .inspect import InspectReport, inspect_source
from .labels import apply_labels
from .preprocess import preprocess
from .split import HELD_OUT, TRAIN, Grouping, group_records, split_records

__all__ = ["HELD_OUT", "TRAIN", "Dataset", "Grouping", "InspectReport", "apply_labels", "check_split", "group_records", "inspect_source", "load_dataset",
           "load_split", "preprocess", "resolve_format", "save_grid", "save_split", "split_records", "to_uint8"]
