"""Distances of single images to a fixed reference set, kept per image so that no row is computed twice.

The audit needs, for every call, the distances of the synthetic, the held-out and the
training images to the training set. Only the synthetic set changes from one call to
the next, and often not even that: the half-samples behind every interval are subsets
of a set already measured, and a benchmark's reference rows measure the same held-out
and training images again and again. :class:`DistanceRows` keys each row by the
content of its image and of the reference set (and the settings of the distance), so
those rows come from memory; only images never seen before are compared.

The cache holds at most ``budget`` distances (and their transform indices), least
recently used rows leaving first: about 10 bytes an entry, 200 MB at the default.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from raresynth import content_hash

Rows = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class DistanceRows:
    """``rows(images, reference_key, compute)``: each image's distance row, computed only for images not seen before."""

    def __init__(self, budget: int = 20_000_000):
        self.budget = budget
        self._rows: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._entries = 0
        self.computed = 0  # rows computed (not found): for tests and benchmarks

    def rows(self, images: torch.Tensor, reference_key: str, compute: Rows) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(len(images), N)`` distances (and transform indices, or None) to the reference set ``reference_key`` names.

        ``compute(some_images)`` returns the rows of images not in the cache, in order.
        """
        if len(images) == 0:
            return compute(images)
        keys = [(reference_key, content_hash(image)) for image in images]
        first: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key not in self._rows and key not in first:
                first[key] = i  # duplicates within the call (copies drawn with replacement) are computed once
        found: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor | None]] = {}
        if first:
            distance, which = compute(images[list(first.values())])
            self.computed += len(first)
            for j, key in enumerate(first):
                found[key] = (distance[j].clone(), None if which is None else which[j].to(torch.int16).clone())
        for key in keys:
            if key not in found:
                found[key] = self._rows[key]
                self._rows.move_to_end(key)
        result = [found[key] for key in keys]
        for key, row in found.items():
            if key not in self._rows:
                self._rows[key] = row
                self._entries += row[0].numel()
        while self._entries > self.budget and self._rows:
            _, (distance, _) = self._rows.popitem(last=False)
            self._entries -= distance.numel()
        distance = torch.stack([row[0] for row in result])
        which = None if result[0][1] is None else torch.stack([row[1] for row in result]).to(torch.int64)
        return distance, which
