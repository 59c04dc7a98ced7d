"""Test fixture plugin ``dcgan``: a small DCGAN (Radford et al. 2016) for the test suite.

The fastest real GAN: one D pass whose logits R1 differentiates directly, several
processes, a benchmark variant. It is not offered to users: on the embedded dataset it
mode-collapses (one image per class) within 10-20 kimg, with or without ``r1``.
Registered in-process by the ``registry`` fixture, and in subprocesses through
``RARESYNTH_PLUGIN_MODULES=dcgan_plugin`` (see ``helpers.fixture_plugins_env``).
"""

from raresynth import hookimpl

from .backend import DCGAN


@hookimpl
def raresynth_register_generators(register):
    register("dcgan", DCGAN)
