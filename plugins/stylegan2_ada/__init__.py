"""Built-in plugin ``stylegan2_ada``: StyleGAN2 with adaptive discriminator augmentation.

Written from the papers, not from NVIDIA's code (which is under a non-commercial
licence): Karras et al., "Analyzing and Improving the Image Quality of StyleGAN",
CVPR 2020, and Karras et al., "Training Generative Adversarial Networks with
Limited Data", NeurIPS 2020. R1 is the separate ``r1`` regularizer plugin.

Modules: :mod:`.networks` (G and D), :mod:`.augment` (ADA), :mod:`.loss` (losses,
path length, lazy-regularization correction), :mod:`.presets` (options and the
``auto`` / ``paper`` presets), :mod:`.backend` (the training step), :mod:`.ops`
(filtered resampling). See ``docs/stylegan2_ada.md``.
"""

from raresynth import hookimpl

from .backend import StyleGAN2ADA

__all__ = ["StyleGAN2ADA"]


@hookimpl
def raresynth_register_generators(register):
    register("stylegan2_ada", StyleGAN2ADA)
