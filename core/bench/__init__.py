"""The bench wing: ``raresynth bench``, several variants x seeds on one split, one report.

``plan`` reads a benchmark config into planned runs, ``run`` trains and measures them,
``report`` writes ``report.md``, plots and ``results.csv``. It builds on ``training`` and
``evaluation``; neither knows it.
"""

from .plan import (
           check_variant_names,
           default_metrics,
           expand_variants,
           load_benchmark,
           plan,
)
from .run import Benchmark, plan_text, prepare_benchmark, run_benchmark

__all__ = ["Benchmark", "check_variant_names", "default_metrics", "expand_variants", "load_benchmark", "plan", "plan_text",
           "prepare_benchmark", "run_benchmark"]
