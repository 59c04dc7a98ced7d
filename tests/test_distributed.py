"""Two processes (gloo, CPU) through torchrun: Accelerate picks them up, ranks stay in sync."""

from __future__ import annotations

import pytest
import torch
import yaml

from helpers import flat, torchrun_two_processes
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
