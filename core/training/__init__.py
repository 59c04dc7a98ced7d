"""The training wing: the loop every backend shares, its run directory and its checkpoints.

``loop`` is :func:`train` (read it in one sitting), ``rundir`` the files a run writes and
what may change on resume, ``checkpoint`` the safetensors state files, ``sampling``
rebuilding a run's backend to sample from it. The names below are the wing's entry points.
"""

from .loop import (
           build_generator,
           dry_run_text,
           make_accelerator,
           synthetic_like_train,
           train,
)
from .rundir import config_differences
from .sampling import load_run_generator, sample_to_folder

__all__ = ["build_generator", "config_differences", "dry_run_text", "load_run_generator", "make_accelerator", "sample_to_folder",
           "synthetic_like_train", "train"]
