"""Built-in plugin ``dcgan``: a small DCGAN baseline (Radford et al. 2016).

It is the backend of ``make demo`` and a fast smoke test for the training loop; the
StyleGAN2-ADA and diffusion backends are the ones to benchmark.
"""

from raresynth import hookimpl

from .backend import DCGAN


@hookimpl
def raresynth_register_generators(register):
    register("dcgan", DCGAN)
