"""Built-in plugin 'memorization': the memorization and privacy audit.

Registers the ``memorization`` metric: copy rate, Meehan et al.'s data-copying Z and
Alaa et al.'s authenticity, each in pixel space and in an embedding (default: the
dataset-specific ``domain`` embedding), plus PNG grids of the closest synthetic /
training pairs when ``artifacts_dir`` is set. See :mod:`.audit` for the definitions.
"""

from __future__ import annotations

from raresynth import hookimpl

from .audit import SpaceAudit, audit_space
from .metric import Memorization

__all__ = ["Memorization", "SpaceAudit", "audit_space"]


@hookimpl
def raresynth_register_metrics(register):
    register("memorization", Memorization)
