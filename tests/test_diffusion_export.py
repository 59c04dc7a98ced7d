"""Export of a ``ddpm`` run to a diffusers ``DDPMPipeline`` folder, and fine-tuning from one."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_diffusion import ddpm_config, run_ddpm

from raresynth import ConfigError, DataSpec
from raresynth.cli import main as raresynth_main
from raresynth.config import load_config
from raresynth.plugins.diffusion import export_pipeline
from raresynth.plugins.diffusion.backend import DDPM, DDPMParams, DDPMSampleParams
from raresynth.plugins.diffusion.export import main as export_main
from raresynth.training import load_run_generator, make_accelerator, train


# diffusers' DPM-Solver calls np.array(tensor, copy=False), which numpy 2 flags; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, plugins):
    """A short unlabelled run (10 steps): enough for images that are not plain noise."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run_ddpm(ddpm_config(run_dir), plugins, "budget.kimg=0.08")
    return run_dir


@pytest.mark.parametrize(("scheduler", "steps"), [("ddpm", None), ("ddim", 10), ("dpmsolver++", 10)])
def test_exported_pipeline_makes_the_images_raresynth_sample_makes(trained, tmp_path, scheduler, steps):
    from diffusers import DDPMPipeline

    out = export_pipeline(trained, tmp_path / "pipe", scheduler=scheduler)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and not list(out.rglob("*.bin"))
    scheduler_config = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["num_train_timesteps"] == 100 and scheduler_config["prediction_type"] == "epsilon"
    info = json.loads((out / "raresynth.json").read_text())
    assert info["checkpoint"] == "checkpoint-000000080.safetensors" and info["weights"] == "ema" and info["null_class"] is None

    pipe = DDPMPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "dpmsolver++": "DPMSolverMultistepScheduler"}[scheduler]

    options = [f"scheduler={scheduler}"] + ([f"steps={steps}"] if steps else [])
    assert raresynth_main(["sample", str(trained), "--n", "2", "--seed", "7", "--out", str(tmp_path / "png"), *options]) == 0
    generator, *_ = load_run_generator(trained)
    ours = generator.sample([7, 8], None, DDPMSampleParams(scheduler=scheduler, steps=steps))
    for i, seed in enumerate([7, 8]):
        theirs = pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=steps or 100, output_type="np").images[0]
        np.testing.assert_allclose(theirs, ((ours[i] + 1) / 2).permute(1, 2, 0).numpy(), atol=1e-5, rtol=0)
        png = np.asarray(Image.open(tmp_path / "png" / f"seed{seed:06d}.png")).astype(int)
        assert np.abs(png - (theirs[..., 0] * 255).round().astype(int)).max() <= 1  # PNG: 8-bit rounding


def test_export_command_line(trained, tmp_path, capsys, registry, toy_config):
    out = tmp_path / "pipe"
    assert export_main([str(trained), str(out), "--scheduler", "dpmsolver++"]) == 0
    assert f"DDPMPipeline.from_pretrained('{out}')" in capsys.readouterr().out
    assert export_main([str(trained), str(out)]) == 2
    assert f"error: {out}: already exists and is not empty; choose another folder or pass --overwrite" in capsys.readouterr().err
    assert export_main([str(trained), str(out), "--overwrite", "--checkpoint", str(trained / "checkpoints" / "nothing")]) == 2
    assert "error:" in capsys.readouterr().err
    # a run of another backend
    toy_run = tmp_path / "toy"
    train(load_config(toy_config(run_dir=str(toy_run)), ["budget.kimg=0.016"], registry=registry), registry=registry, progress_bar=False)
    assert export_main([str(toy_run), str(tmp_path / "other")]) == 2
    assert "a 'toy' run; only diffusion (ddpm) runs export to a diffusers pipeline" in capsys.readouterr().err


def test_fine_tuning_starts_from_an_exported_pipeline(trained, tmp_path, plugins):
    from safetensors.torch import load_file

    out = export_pipeline(trained, tmp_path / "pipe")
    exported = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))

    same = DDPM(DDPMParams(init_from=str(out)), DataSpec(16, 1))
    same.setup(make_accelerator("no"))
    for key, value in exported.items():
        assert torch.equal(same.ema.state_dict()[key], value), key
        assert torch.equal(same.unet.state_dict()[key], value), key

    # labelled data: the class embedding (2 classes + null) starts afresh, the rest is loaded
    labelled = DDPM(DDPMParams(init_from=str(out / "unet")), DataSpec(16, 1, ("a", "b")))
    labelled.setup(make_accelerator("no"))
    weights = labelled.ema.state_dict()
    assert weights["class_embedding.weight"].shape[0] == 3
    assert all(torch.equal(weights[key], value) for key, value in exported.items())

    with pytest.raises(ConfigError, match=r"generator.init_from: the pretrained UNet has in_channels=1, the data has 3 channel"):
        DDPM(DDPMParams(init_from=str(out)), DataSpec(16, 3)).setup(make_accelerator("no"))
    with pytest.raises(ConfigError, match="generator.init_from: .*nowhere: no diffusers UNet here"):
        DDPM(DDPMParams(init_from=str(tmp_path / "nowhere")), DataSpec(16, 1)).setup(make_accelerator("no"))

    # and a fine-tuning run goes through the whole loop
    config = ddpm_config(tmp_path / "ft", init_from=str(out))
    del config["generator"]["preset"]
    run = run_ddpm(config, plugins, "budget.kimg=0.016")
    assert run.progress.step == 2
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["generator"]["init_from"] == str(out)


def test_conditional_export_names_its_classes(tmp_path, plugins, capsys):
    from diffusers import UNet2DModel

    run_dir = tmp_path / "cond"
    run_ddpm(ddpm_config(run_dir, labels="auto"), plugins, "budget.kimg=0.016")
    assert export_main([str(run_dir), str(tmp_path / "pipe")]) == 0
    assert "the network is class-conditional" in capsys.readouterr().err
    info = json.loads((tmp_path / "pipe" / "raresynth.json").read_text())
    assert info["class_names"] == ["fundus", "histology"] and info["null_class"] == 2
    unet = UNet2DModel.from_pretrained(str(tmp_path / "pipe" / "unet"))
    assert unet.config.num_class_embeds == 3
