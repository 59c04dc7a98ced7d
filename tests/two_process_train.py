"""Run by test_distributed.py under torchrun: train one config on this rank, save its weights.

Usage: torchrun --nproc_per_node 2 two_process_train.py CONFIG OUT_DIR
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import dcgan_plugin  # noqa: E402
import toy_plugin  # noqa: E402
from raresynth.config import load_config  # noqa: E402
from raresynth.registry import load_plugins  # noqa: E402
from raresynth.training import train  # noqa: E402
from raresynth.training.checkpoint import save_state  # noqa: E402

config_path, out_dir = sys.argv[1], Path(sys.argv[2])
registry = load_plugins(extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin)])
run = train(load_config(config_path, registry=registry), registry=registry, progress_bar=False)
rank = int(os.environ.get("RANK", "0"))
save_state({"world": run.num_processes, "nimg": run.progress.nimg, "weights": run.generator.state_dict()}, out_dir / f"rank{rank}.safetensors")
