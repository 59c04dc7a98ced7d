"""Reference rows: what the metrics say about real images, about copies and about noise, on this dataset.

A metric value means little on its own: is an SWD of 200 good for 32-pixel fundus
crops? Every run's metrics and every benchmark table therefore carry three rows measured
exactly like a generator's synthetic set (same metric objects, same size and class
balance where a generator is involved):

``real``
    ``real (held-out)``: the held-out real images as the synthetic set, the best a
    generator can hope for on this dataset. A metric that looks at ``held_out`` itself
    (``Metric.uses_held_out``: memorization calibrates on it, utility tests on it) gets
    one half of the held-out images as the synthetic set and the other half as
    ``held_out``, then the other way round, and the two are averaged: no image is ever
    compared with itself.
``copies``
    training images drawn with replacement (the perfect memorizer), with the labels a
    generator's set has.
``noise``
    a trivial generator: independent per-pixel Gaussian noise at the training images'
    per-pixel mean and standard deviation, clipped to ``[-1, 1]``.

:func:`informative` then says whether a value separates real images from the trivial
reference it must beat (:attr:`raresynth.MetricValue.must_beat`): a value that scores
noise (or, for privacy, copies) as well as or better than real images on this dataset is
uninformative here, and the report never bolds it.

Measured once per dataset, metrics and size: :func:`measure_references` keeps the
result under ``$RARESYNTH_CACHE_DIR/references/`` keyed by all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import RaresynthError
from ..interfaces import ImageSet, Metric
from .features import cache_root, content_hash
from .measure import half_sample_values, metric_values, subset

REAL, COPIES, NOISE = "real", "copies", "noise"
REFERENCES = (REAL, COPIES, NOISE)
LABELS = {REAL: "real (held-out)", COPIES: "copies", NOISE: "noise"}
VERSION = "references-v1"


def noise_set(train: ImageSet, n: int, labels: torch.Tensor | None, seed: int) -> ImageSet:
    """``n`` images of per-pixel Gaussian noise at the training images' per-pixel mean and std."""
    images = train.images.float()
    mean, std = images.mean(0), images.std(0, unbiased=False)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *images.shape[1:]), generator=generator)
    return ImageSet(images=(mean + std * noise).clamp(-1, 1), labels=labels, name=LABELS[NOISE])


def copies_set(train: ImageSet, n: int, labels: torch.Tensor | None, seed: int) -> ImageSet:
    """``n`` training images drawn with replacement; with ``labels``, each drawn from its own class."""
    generator = torch.Generator().manual_seed(seed)
    if labels is None or train.labels is None:
        index = torch.randint(len(train), (n,), generator=generator)
    else:
        index = torch.empty(n, dtype=torch.int64)
        for label in labels.unique():
            where = (labels == label).nonzero().flatten()
            pool = (train.labels == label).nonzero().flatten()
            if len(pool) == 0:
                pool = torch.arange(len(train))
            index[where] = pool[torch.randint(len(pool), (len(where),), generator=generator)]
    return ImageSet(images=train.images[index], labels=labels if labels is not None else train.labels[index] if train.labels is not None else None,
                    name=LABELS[COPIES])


def _held_out_halves(held_out: ImageSet, seed: int) -> tuple[ImageSet, ImageSet]:
    """Two halves of the held-out set, stratified by label so both keep every class."""
    generator = torch.Generator().manual_seed(seed)
    if held_out.labels is None:
        order = torch.randperm(len(held_out), generator=generator)
        first = order[: len(order) // 2]
    else:
        first_parts = []
        for label in held_out.labels.unique():
            members = (held_out.labels == label).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            first_parts.append(members[: len(members) // 2])
        first = torch.cat(first_parts)
    mask = torch.zeros(len(held_out), dtype=torch.bool)
    mask[first] = True
    everything = torch.arange(len(held_out))
    return subset(held_out, everything[mask], "held-out half A"), subset(held_out, everything[~mask], "held-out half B")


def _values(metrics: Sequence[tuple[str, Metric]], train: ImageSet, held_out: ImageSet, synthetic: ImageSet) -> dict[str, dict[str, Any]]:
    """:func:`metric_values`, leaving out a metric that cannot be computed on this (small) reference set.

    A held-out half can be too small for a metric (utility's chance check, PRDC's k
    neighbours); the reference row then has no value for it, and the report shows "—".
    """
    values: dict[str, dict[str, Any]] = {}
    for pair in metrics:
        try:
            values.update(metric_values([pair], train, held_out, synthetic))
        except RaresynthError:
            continue
    return values


def _average(entries: Sequence[Mapping[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, first in entries[0].items():
        numbers = [float(e[name]["value"]) for e in entries if name in e]
        out[name] = {**first, "value": sum(numbers) / len(numbers)}
    return out


def measure_real(metrics: Sequence[tuple[str, Metric]], train: ImageSet, held_out: ImageSet, resamples: int,
                 seed: int) -> dict[str, dict[str, Any]]:
    """The ``real (held-out)`` row (see the module docstring), with half-sample replicates where allowed."""
    plain = [(name, m) for name, m in metrics if not m.uses_held_out]
    own = [(name, m) for name, m in metrics if m.uses_held_out]
    real_set = ImageSet(images=held_out.images, labels=held_out.labels, name=LABELS[REAL])
    values = _values(plain, train, held_out, real_set)  # the full set first, as in with_replicates
    replicates = half_sample_values(plain, train, held_out, real_set, resamples, seed)
    if own and len(held_out) >= 4:
        a, b = _held_out_halves(held_out, seed)
        # costly metrics (Metric.bootstrap False: they train a classifier per call) go one way only
        cheap = [(name, m) for name, m in own if m.bootstrap]
        costly = [(name, m) for name, m in own if not m.bootstrap]
        values.update(_average([_values(cheap, train, b, a), _values(cheap, train, a, b)]) if cheap else {})
        values.update(_values(costly, train, b, a))
    for name, numbers in replicates.items():
        if name in values:
            values[name]["replicates"] = numbers
    return values


def measure_trivial(metrics: Sequence[tuple[str, Metric]], train: ImageSet, held_out: ImageSet, synthetic: ImageSet,
                    resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """A trivial generator's row: ``synthetic`` measured like any synthetic set, with half-sample replicates."""
    values = _values(metrics, train, held_out, synthetic)  # the full set first, as in with_replicates
    replicates = half_sample_values(metrics, train, held_out, synthetic, resamples, seed)
    for name, numbers in replicates.items():
        if name in values:
            values[name]["replicates"] = numbers
    return values


def reference_key(train: ImageSet, held_out: ImageSet, metric_refs: Sequence[Mapping[str, Any]], n: int,
                  labels: torch.Tensor | None, resamples: int, seed: int) -> str:
    """What the reference rows depend on, hashed: the data, the metrics and their options, size, labels, resamples, seed."""
    description = {"version": VERSION, "train": content_hash(train.images, train.labels),
                   "held_out": content_hash(held_out.images, held_out.labels), "metrics": list(metric_refs), "n": n,
                   "labels": None if labels is None else hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest(),
                   "resamples": resamples, "seed": seed}
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:32]


def measure_references(metrics: Sequence[tuple[str, Metric]], metric_refs: Sequence[Mapping[str, Any]], train: ImageSet,
                       held_out: ImageSet, n: int, labels: torch.Tensor | None, resamples: int = 10, seed: int = 0,
                       log=None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{"real" | "copies" | "noise": {value name: entry}}``, read from the cache when measured before.

    ``metric_refs`` are the metrics' names and options as plain data (they key the
    cache); ``n`` and ``labels`` are the size and labels of a generator's synthetic set.
    """
    key = reference_key(train, held_out, metric_refs, n, labels, resamples, seed)
    root = cache_root()
    path = root / "references" / f"{key}.json" if root is not None else None
    if path is not None and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["references"]
        except (OSError, ValueError):
            pass  # a damaged cache file is measured again, never trusted
    if log:
        log(f"reference rows: real held-out ({len(held_out)} images), copies and noise ({n} each)")
    folders = [metric.output_dir for _, metric in metrics]
    try:
        for _, metric in metrics:  # the references' artifacts would overwrite a run's own
            metric.output_dir = None
        # Costly metrics (Metric.bootstrap False) skip the copies row: no value of theirs must beat copies
        # unless it is a privacy value, and copies of training images are what trtr already measures.
        for_copies = [(name, m) for name, m in metrics if m.bootstrap]
        references = {
            REAL: measure_real(metrics, train, held_out, resamples, seed),
            COPIES: measure_trivial(for_copies, train, held_out, copies_set(train, n, labels, seed), resamples, seed),
            NOISE: measure_trivial(metrics, train, held_out, noise_set(train, n, labels, seed), resamples, seed),
        }
    finally:
        for (_, metric), folder in zip(metrics, folders):
            metric.output_dir = folder
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps({"key": key, "references": references}, indent=1))
        os.replace(partial, path)
    return references


def informative(entry: Mapping[str, Any], references: Mapping[str, Mapping[str, Mapping[str, Any]]], name: str) -> tuple[bool | None, str]:
    """Whether value ``name`` ranks real images ahead of the trivial references it must beat, and why not.

    ``(None, "")`` for values that are not ranked or have no reference row.
    For ``ideal: real`` the trivial reference must lie outside the real row's own interval
    (its half-sample spread), or differ at all when there is none.
    """
    ideal = entry.get("ideal")
    real = (references.get(REAL) or {}).get(name)
    if ideal not in ("higher", "lower", "real") or real is None:
        return None, ""
    problems = []
    for ref in entry.get("must_beat") or (NOISE,):
        other = (references.get(ref) or {}).get(name)
        if other is None:
            continue
        r, o = float(real["value"]), float(other["value"])
        if not (math.isfinite(r) and math.isfinite(o)):
            continue
        if ideal == "higher":
            fails = o >= r
        elif ideal == "lower":
            fails = o <= r
        else:
            spread = 0.0
            replicates = [x for x in real.get("replicates") or [] if math.isfinite(x)]
            if len(replicates) >= 2:
                mean = sum(replicates) / len(replicates)
                spread = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in replicates) / (len(replicates) - 1))
            fails = abs(o - r) <= spread
        if fails:
            problems.append(f"{LABELS[ref]} scores {o:.4g}, real (held-out) {r:.4g}")
    return (not problems), "; ".join(problems)
