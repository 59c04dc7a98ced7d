"""Run by test_distributed.py under torchrun: train one config on this rank, save its weights.

Usage: torchrun --nproc_per_node 2 two_process_train.py CONFIG OUT_DIR

The rank's file also holds ``r1_gamma``: every gamma the ``r1`` regularizer returned
during the run (the values its penalties were weighted with), when it ran.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import dcgan_plugin  # noqa: E402
import toy_plugin  # noqa: E402
from raresynth.config import load_config  # noqa: E402
from raresynth.plugins.r1 import R1  # noqa: E402
from raresynth.registry import load_plugins  # noqa: E402
from raresynth.training import train  # noqa: E402
from raresynth.training.checkpoint import save_state  # noqa: E402

config_path, out_dir = sys.argv[1], Path(sys.argv[2])
used_gammas: list[float] = []
r1_gamma = R1.gamma


def recording_gamma(self, per_process_batch: int) -> float:
    used_gammas.append(r1_gamma(self, per_process_batch))
    return used_gammas[-1]


R1.gamma = recording_gamma
registry = load_plugins(extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin)])
run = train(load_config(config_path, registry=registry), registry=registry, progress_bar=False)
rank = int(os.environ.get("RANK", "0"))
state = {"world": run.num_processes, "nimg": run.progress.nimg, "weights": run.generator.state_dict()}
if used_gammas:
    state["r1_gamma"] = torch.tensor(used_gammas, dtype=torch.float64)
save_state(state, out_dir / f"rank{rank}.safetensors")
