"""Built-in plugin 'fidelity': FID, KID, precision/recall and Inception Score via torch-fidelity.

Weights are never downloaded: the Inception (``fid``, ``kid``, ``isc``) and VGG16
(``prc``) files are read from ``weights_path`` or ``$RARESYNTH_WEIGHTS_DIR``; see
``docs/metrics.md`` for the files and their checksums. ``feature_extractor: domain``
uses the dataset-specific embedding instead, which needs no file at all.
"""

from __future__ import annotations

from raresynth import hookimpl

from .metrics import FID, ISC, KID, PRC

__all__ = ["FID", "ISC", "KID", "PRC"]


@hookimpl
def raresynth_register_metrics(register):
    register("fid", FID)
    register("kid", KID)
    register("prc", PRC)
    register("isc", ISC)
