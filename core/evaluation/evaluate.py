"""Evaluating one synthetic set the way ``metrics.json`` shows it: values, intervals, reference rows.

:func:`evaluate` runs every metric on the full synthetic set and on half-samples of it
(:mod:`~raresynth.evaluation.measure`), measures the reference rows once per dataset
(:mod:`~raresynth.evaluation.references`) and gives each value its interval
(:mod:`~raresynth.evaluation.statistics`), its reference values and whether it is
informative on this dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..interfaces import ImageSet, Metric
from .measure import half_sample_values, metric_values
from .references import REFERENCES, informative, measure_references
from .statistics import RunValue, cell_interval


def with_replicates(metrics: Sequence[tuple[str, Metric]], train: ImageSet, held_out: ImageSet, synthetic: ImageSet,
                    resamples: int, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``{value name: entry}`` with ``replicates`` (half-sample values) and ``interval`` (95%) where the metric allows."""
    # The full set first: what a metric keeps per image (radiomic features, distance rows) then serves
    # every half-sample, which writes no artifacts (half_sample_values), so the full set's stay.
    values = metric_values(metrics, train, held_out, synthetic)
    replicates = half_sample_values(metrics, train, held_out, synthetic, resamples, seed)
    for name, entry in values.items():
        entry["replicates"] = replicates.get(name, [])
        interval = cell_interval([RunValue(float(entry["value"]), entry["replicates"])])
        entry["interval"] = list(interval) if interval else None
    return values


def attach_references(values: Mapping[str, dict[str, Any]], references: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> None:
    """Give each entry its reference values and whether it is informative on this dataset (in place)."""
    for name, entry in values.items():
        entry["references"] = {ref: references[ref][name]["value"] for ref in REFERENCES if name in references.get(ref, {})}
        verdict, why = informative(entry, references, name)
        entry["informative"] = verdict
        if why:
            entry["uninformative_because"] = why


def evaluate(metrics: Sequence[tuple[str, Metric]], metric_refs: Sequence[Mapping[str, Any]], train: ImageSet, held_out: ImageSet,
             synthetic: ImageSet, resamples: int = 10, references: bool = True, seed: int = 0, log=None) -> dict[str, dict[str, Any]]:
    """Every value of ``synthetic`` with its interval, reference values and informativeness (see the module docstring)."""
    values = with_replicates(metrics, train, held_out, synthetic, resamples, seed)
    if references:
        rows = measure_references(metrics, metric_refs, train, held_out, len(synthetic), synthetic.labels, resamples, seed, log=log)
        attach_references(values, rows)
    return values
