"""Two processes (gloo, CPU) through torchrun: Accelerate picks them up, ranks stay in sync."""

from __future__ import annotations

import pytest
import torch
import yaml

from helpers import flat, torchrun_two_processes
from raresynth.plugins.r1 import auto_gamma
from raresynth.training.checkpoint import list_checkpoints, load_state


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["dcgan", "toy"])
def test_two_processes_end_with_identical_weights(tmp_path, toy_config, generator):
    config = toy_config(run_dir=str(tmp_path / "run"))
    config["generator"] = {"name": generator, **({"base_channels": 8, "max_channels": 16, "z_dim": 16} if generator == "dcgan" else {})}
    config["budget"] = {"kimg": 0.064}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = torchrun_two_processes(config_path, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = load_state(tmp_path / "rank0.safetensors"), load_state(tmp_path / "rank1.safetensors")
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["nimg"] == rank1["nimg"] == 64  # global batch 8 = 2 x 4 per process
    weights0, weights1 = dict(flat(rank0["weights"])), dict(flat(rank1["weights"]))
    assert weights0.keys() == weights1.keys() and weights0
    for key, tensor in weights0.items():
        assert torch.equal(tensor, weights1[key]), key
    # only the main process wrote the run directory, once
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["checkpoint-000000064.safetensors"]
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_r1_auto_gamma_follows_the_global_batch_under_two_processes(tmp_path, toy_config):
    """Karras et al. 2020b: gamma = 0.0002 * resolution^2 / N with N the global batch (8 = 2 x 4), not the per-process 4."""
    config = toy_config(run_dir=str(tmp_path / "run"))
    config["generator"] = {"name": "dcgan", "base_channels": 8, "max_channels": 16, "z_dim": 16}
    config["regularizers"] = [{"name": "r1", "gamma": "auto", "interval": 1}]
    config["budget"] = {"kimg": 0.032}
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = torchrun_two_processes(config_path, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        used = load_state(tmp_path / f"rank{rank}.safetensors")["r1_gamma"]
        assert len(used) == 4  # one penalty per discriminator step: 32 images, 8 a step
        assert torch.allclose(used, torch.full_like(used, auto_gamma(16, 8)))  # 0.0002 * 16^2 / 8 = 0.0064
        assert auto_gamma(16, 8) != auto_gamma(16, 4)
