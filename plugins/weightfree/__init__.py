"""Built-in plugin 'weightfree': fidelity and diversity metrics that need no downloaded weights.

* ``swd``: sliced Wasserstein distance on Laplacian pyramids (Karras et al. 2018).
* ``ms_ssim``: MS-SSIM of synthetic pairs against the real-pairs baseline.
* ``prdc``: precision, recall, density, coverage (Naeem et al. 2020) in an embedding
  (default: the dataset-specific ``domain`` embedding).
* ``frd``: Fréchet Radiomics Distance, registered only when the optional ``frd-score``
  and pyradiomics packages are installed (``pip install raresynth[frd]``).
"""

from __future__ import annotations

from raresynth import hookimpl

from .frd import FRD, frd_available
from .msssim import MSSSIM
from .prdc import PRDC
from .swd import SWD

__all__ = ["FRD", "MSSSIM", "PRDC", "SWD", "frd_available"]


@hookimpl
def raresynth_register_metrics(register):
    register("swd", SWD)
    register("ms_ssim", MSSSIM)
    register("prdc", PRDC)
    if frd_available():
        register("frd", FRD)
