"""The ``embedded`` data format: a small labelled medical dataset that ships with raresynth.

It needs no ``data.source`` and no network: its images are crops of the real
medical images in scikit-image's wheel (a fundus photograph and an IHC histology
image), with training and held-out crops cut from disjoint regions of each image.
See :mod:`raresynth.plugins.embedded.crops` for the sources and their licences.

A run config selects it with ``data: {format: embedded}`` and tunes it through
``data.format_options`` (``classes``, ``train_per_class``, ``held_out_per_class``,
``crop_size``, ``held_out_fraction_of_area``, ``seed``).
"""

from __future__ import annotations

from raresynth import hookimpl

from .crops import EmbeddedMedical

__all__ = ["EmbeddedMedical"]


@hookimpl
def raresynth_register_data_formats(register):
    register("embedded", EmbeddedMedical)
