"""Built-in plugin 'utility': downstream classification utility of a synthetic set.

Registers the ``utility`` metric: a small classifier trained on real, synthetic, and
real plus synthetic images, tested on the real held-out split (see :mod:`.metric`).
"""

from __future__ import annotations

from raresynth import hookimpl

from .metric import NotApplicableWarning, Utility

__all__ = ["NotApplicableWarning", "Utility"]


@hookimpl
def raresynth_register_metrics(register):
    register("utility", Utility)
