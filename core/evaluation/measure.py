"""Measuring a synthetic set: every metric's values as plain data, and their sampling spread.

:func:`metric_values` is the one place a metric's :class:`~raresynth.MetricValue` list
becomes the plain entries that ``metrics.json``, the benchmark records and the report
read (value, ideal, question, which metric reported it).

:func:`half_sample_values` repeats a metric on random halves of the synthetic set
(drawn without replacement). Half-sampling (McCarthy, "Pseudo-replication: half
samples", Rev. Int. Stat. Inst. 1969; Politis & Romano, "Large sample confidence regions
based on subsamples under minimal assumptions", Ann. Stat. 1994): for a mean, the
variance over half-samples of size n/2 is sigma^2/(n/2) * (1 - 1/2) = sigma^2/n, the
variance of the full-set estimate itself, and the same holds to first order for smooth
statistics. Without replacement, so no image is paired with a copy of itself (a
with-replacement bootstrap would inflate MS-SSIM and shrink nearest-neighbour radii).
Size-dependent values (FID grows on smaller sets) are used only through their spread:
:mod:`raresynth.evaluation.statistics` centres the replicates on the full-set value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import RaresynthError
from ..interfaces import ImageSet, Metric, MetricValue


def entry(value: MetricValue, metric: str) -> dict[str, Any]:
    """A value as plain data: ``{"value", "higher_is_better", "ideal", "question", "must_beat", "metric"}``."""
    return {"value": value.value, "higher_is_better": value.higher_is_better, "ideal": value.ideal, "question": value.question,
            "must_beat": list(value.must_beat), "metric": metric}


def metric_values(metrics: Sequence[tuple[str, Metric]], train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> dict[str, dict[str, Any]]:
    """``{value name: entry}`` for every value the metrics report on ``synthetic``."""
    results: dict[str, dict[str, Any]] = {}
    for name, metric in metrics:
        for value in metric.compute(train, held_out, synthetic):
            results[value.name] = entry(value, name)
    return results


def subset(images: ImageSet, index: torch.Tensor, name: str = "") -> ImageSet:
    labels = images.labels[index] if images.labels is not None else None
    return ImageSet(images=images.images[index], labels=labels, name=name or images.name)


def half_samples(n: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` random halves (``n // 2`` indices each, sorted, without replacement), reproducible for ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator)[: n // 2].sort().values for _ in range(count)]


def half_sample_values(metrics: Sequence[tuple[str, Metric]], train: ImageSet, held_out: ImageSet, synthetic: ImageSet,
                       count: int, seed: int = 0) -> dict[str, list[float]]:
    """``{value name: [value on each half-sample]}`` for the metrics that allow repeating (``Metric.bootstrap``).

    A metric that cannot be computed on half the set (too few images for its
    neighbourhoods, say) gets no half-sample values rather than failing the measurement.
    """
    if count < 2 or len(synthetic) < 4:
        return {}
    repeatable = [(name, metric) for name, metric in metrics if metric.bootstrap]
    per_metric: dict[str, dict[str, list[float]]] = {name: {} for name, _ in repeatable}
    folders = [metric.output_dir for _, metric in repeatable]
    try:
        for _, metric in repeatable:  # artifacts (closest-pair grids) belong to the full set only
            metric.output_dir = None
        halves = [subset(synthetic, index, f"{synthetic.name} (half)") for index in half_samples(len(synthetic), count, seed)]
        for name, metric in repeatable:
            try:
                for half in halves:
                    for value_name, entry_ in metric_values([(name, metric)], train, held_out, half).items():
                        per_metric[name].setdefault(value_name, []).append(float(entry_["value"]))
            except RaresynthError:  # e.g. PRDC's k neighbours need more images than half the set holds
                per_metric[name] = {}
    finally:
        for (_, metric), folder in zip(repeatable, folders):
            metric.output_dir = folder
    return {value_name: numbers for values in per_metric.values() for value_name, numbers in values.items()}
