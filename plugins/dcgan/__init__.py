"""Built-in plugin ``dcgan``: a small DCGAN baseline (Radford et al. 2016).

The fastest backend: a smoke test for the training loop and for multi-process runs.
It is not a research baseline: on the embedded dataset it mode-collapses (one image
per class) within the first 10-20 kimg, with or without ``r1``. Use ``stylegan2_ada``
or ``ddpm`` for real work.
"""

from raresynth import hookimpl

from .backend import DCGAN


@hookimpl
def raresynth_register_generators(register):
    register("dcgan", DCGAN)
