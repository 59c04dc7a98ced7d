"""The conformance kit (`raresynth.testing`) and the core's output contract.

Every built-in plugin passes the kit; each deliberately broken plugin
(`tests/broken_plugins.py`) fails it, or fails a run, with the message that says what to change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import broken_plugins
import dcgan_plugin
import toy_plugin
from medical_files import write_patient_series
from raresynth import PluginError
from raresynth.config import load_config
from raresynth.registry import load_plugins, set_registry
from raresynth.testing import TINY_STYLEGAN2, ConformanceError, check_data_format, check_generator, check_metric, check_regularizer
from raresynth.training import train
from raresynth.training.sampling import sample_to_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def kit_registry():
    """Installed plugins, the toy and dcgan fixtures, and the broken plugins (as plugin 'broken')."""
    reg = load_plugins(extra=[("toy", toy_plugin), ("dcgan", dcgan_plugin), ("broken", broken_plugins)])
    set_registry(reg)
    yield reg
    set_registry(None)


# -- every built-in plugin passes -------------------------------------------------------------


def test_stylegan2_ada_passes_the_kit(kit_registry, tmp_path):
    check_generator(kit_registry.generator("stylegan2_ada"), TINY_STYLEGAN2, registry=kit_registry, tmp_path=tmp_path)


def test_ddpm_passes_the_kit(kit_registry, tmp_path):
    params = {"preset": "tiny", "num_train_timesteps": 100, "lr_warmup_steps": 0}
    check_generator(kit_registry.generator("ddpm"), params, registry=kit_registry, tmp_path=tmp_path)


def test_fixture_backends_pass_the_kit(kit_registry, tmp_path):
    check_generator(toy_plugin.ToyGenerator, conditional=False, registry=kit_registry, tmp_path=tmp_path / "toy")
    check_generator(dcgan_plugin.DCGAN, {"base_channels": 8, "max_channels": 16, "z_dim": 16}, registry=kit_registry,
                    tmp_path=tmp_path / "dcgan")


@pytest.mark.parametrize("name, params", [("r1", {"interval": 2}), ("lecam", {}), ("lecam", {"interval": 2}), ("diffaugment", {}),
                                          ("diffaugment", {"policy": ["translation"]})])
def test_builtin_regularizers_pass_the_kit_with_stylegan2_ada(kit_registry, tmp_path, name, params):
    check_regularizer(kit_registry.regularizer(name), params, registry=kit_registry, tmp_path=tmp_path)


@pytest.mark.parametrize("name, params", [("swd", {}), ("ms_ssim", {}), ("prdc", {"embedding": "pixels"}),
                                          ("memorization", {"embedding": "pixels"}),
                                          ("utility", {"steps": 20, "seeds": 1, "resolution": 16})])
def test_builtin_metrics_pass_the_kit(kit_registry, name, params):
    check_metric(kit_registry.metric(name), params, registry=kit_registry)


def test_builtin_data_formats_pass_the_kit(kit_registry, tmp_path):
    import nibabel
    import numpy as np
    from nibabel.testing import data_path
    from PIL import Image

    write_patient_series(tmp_path / "dicom", patients=2, series_per_patient=1, files_per_series=2)
    check_data_format(kit_registry.data_format("dicom"), tmp_path / "dicom", registry=kit_registry)
    nifti = tmp_path / "nifti"
    nifti.mkdir()
    nibabel.save(nibabel.load(f"{data_path}/example4d.nii.gz"), nifti / "example4d.nii.gz")
    check_data_format(kit_registry.data_format("nifti"), nifti, registry=kit_registry)
    from skimage import data

    folder = tmp_path / "pngs" / "cells"
    folder.mkdir(parents=True)
    for i, crop in enumerate((data.astronaut()[:64, :64, 0], data.camera()[:64, :64])):
        Image.fromarray((crop / crop.max() * 255).astype("uint8")).save(folder / f"{i}.png")
    check_data_format(kit_registry.data_format("image_folder"), tmp_path / "pngs", registry=kit_registry)
    np.savez(tmp_path / "images.npz", images=data.camera()[None, :32, :32].repeat(3, axis=0))
    check_data_format(kit_registry.data_format("npz"), tmp_path / "images.npz", registry=kit_registry)
    check_data_format(kit_registry.data_format("embedded"), None, {"train_per_class": 2, "held_out_per_class": 1}, registry=kit_registry)


# -- broken plugins fail, with what to change ------------------------------------------------


@pytest.mark.parametrize("cls, message", [
    (broken_plugins.Bytes255, (r"generator 'bytes255' of plugin 'broken' .*: sample\(\) returned values in \[.*\]; images must be in "
                               r"\[-1, 1\]: rescale \(x / 127.5 - 1 for 0..255")),
    (broken_plugins.HalfSize, (r"generator 'half_size' .*returned images shaped \(4, 1, 8, 8\) for 4 seeds; expected \(n, C, R, R\) = "
                               r"\(4, 1, 16, 16\)")),
    (broken_plugins.BatchNoise, r"seed 12 gave another image alone than in a batch .* own torch.Generator\(seed\)"),
    (broken_plugins.NoOptimizerState, (r"a run resumed after 2 of 4 steps ends with another state .*first difference at "
                                       r"/generator/.*save everything that changes")),
])
def test_broken_generators_fail_the_kit_saying_what_to_change(kit_registry, tmp_path, cls, message):
    with pytest.raises(ConformanceError, match=message):
        check_generator(cls, specs=[(1, False)], conditional=False, registry=kit_registry, tmp_path=tmp_path)


def test_a_backend_that_ignores_labels_fails(kit_registry, tmp_path):
    with pytest.raises(ConformanceError, match=r"same images for class 0 and class 1; condition the networks on labels"):
        check_generator(toy_plugin.ToyGenerator, specs=[(3, True)], registry=kit_registry, tmp_path=tmp_path)


@pytest.mark.parametrize("cls, params, message", [
    (broken_plugins.NotLazyR1, {"interval": 2}, (r"with interval 4 penalty\(\) is .*, not 4 x its interval-1 value .*multiply the penalty by "
                                                 r"self.interval")),
    (broken_plugins.ForgetfulLeCam, {}, r"a run resumed after 2 of 4 steps ends with another state .*regularizer state"),
    (broken_plugins.Detaching, {}, r"augment\(\) is not differentiable w.r.t. the images"),
])
def test_broken_regularizers_fail_the_kit(kit_registry, tmp_path, cls, params, message):
    with pytest.raises(ConformanceError, match=message):
        check_regularizer(cls, params, registry=kit_registry, tmp_path=tmp_path)


def test_a_nondeterministic_metric_and_colliding_record_ids_fail(kit_registry):
    with pytest.raises(ConformanceError, match=r"compute\(\) gave other values for the same inputs"):
        check_metric(broken_plugins.ClockMetric, registry=kit_registry)
    with pytest.raises(ConformanceError, match=r"scan\(\) lists record id 'scan.npy' twice; make ids unique"):
        check_data_format(broken_plugins.DuplicateIds, None, registry=kit_registry)


# -- the output contract, checked by the core on every path ------------------------------------


def test_a_run_with_a_bad_range_fails_at_its_first_grid_naming_generator_and_plugin(kit_registry, toy_config):
    config = load_config(toy_config(generator={"name": "bytes255"}), registry=kit_registry)
    with pytest.raises(PluginError, match=r"^generator 'bytes255' of plugin 'broken' \(package broken_plugins\): sample\(\) returned "
                                          r"values in \[\d.*\]; images must be in \[-1, 1\]"):
        train(config, registry=kit_registry, progress_bar=False)
    assert not list((Path(config.run_dir) / "samples").glob("*.png"))  # no white grid was written


def test_sampling_a_run_checks_the_contract(kit_registry, toy_config, tmp_path):
    run = train(load_config(toy_config(), registry=kit_registry), registry=kit_registry, progress_bar=False)
    written = json.loads(sample_to_folder(run.run_dir, tmp_path / "ok", n=3, registry=kit_registry).read_text())
    assert len(written["images"]) == 3
    config = (run.run_dir / "config.yaml").read_text()
    (run.run_dir / "config.yaml").write_text(re.sub(r"name: toy", "name: half_size", config, count=1))
    with pytest.raises(PluginError, match=r"generator 'half_size' of plugin 'broken'.*shaped \(3, 1, 8, 8\)"):
        sample_to_folder(run.run_dir, tmp_path / "bad", n=3, registry=kit_registry)


def test_a_benchmark_records_a_contract_violation_as_that_variants_failure(kit_registry, tmp_path):
    import yaml

    from raresynth.bench import prepare_benchmark, run_benchmark

    bench = {
        "out_dir": str(tmp_path / "bench"),
        "seeds": [0],
        "base": {"data": {"format": "embedded", "resolution": 16, "channels": 1,
                          "format_options": {"train_per_class": 8, "held_out_per_class": 4, "crop_size": 32}},
                 "budget": {"kimg": 0.016}, "batch_size": 8, "schedule": {"tick_kimg": 0.008, "snapshot_kimg": 0.016, "grid_size": 4}},
        "variants": {"toy": {"generator": {"name": "toy"}}, "bytes": {"generator": {"name": "bytes255"}}},
        "metrics": ["mean_gap"],
        "synthetic_images": 12,
    }
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(bench))
    run_benchmark(prepare_benchmark(path, registry=kit_registry), progress_bar=False, log=lambda message: None)
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    runs = {variant["name"]: variant["runs"][0] for variant in results["variants"]}
    assert runs["toy"]["status"] == "done" and "mean_gap" in runs["toy"]["values"]
    assert runs["bytes"]["status"] == "failed" and not runs["bytes"]["values"]
    assert re.search(r"generator 'bytes255' of plugin 'broken'.*images must be in \[-1, 1\]", runs["bytes"]["error"])


# -- two processes -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_average_gradients_or_the_kit_says_how(kit_registry, tmp_path):
    check_generator(toy_plugin.ToyGenerator, specs=[(1, False)], conditional=False, processes=2, registry=kit_registry,
                    tmp_path=tmp_path / "toy")
    with pytest.raises(ConformanceError, match=r"rank 0 and rank 1 hold different weights .*call the modules accelerator.prepare\(\) "
                                               r"returned"):
        check_generator(broken_plugins.UnsyncedGradients, specs=[(1, False)], conditional=False, processes=2, registry=kit_registry,
                        tmp_path=tmp_path / "unsynced")


@pytest.mark.parametrize("images, message", [
    (torch.zeros(2, 1, 16, 16, dtype=torch.uint8), r"returned torch.uint8 images; return float images in \[-1, 1\]"),
    (torch.full((2, 1, 16, 16), float("nan")), r"returned non-finite values"),
    (torch.zeros(3, 1, 16, 16), r"returned images shaped \(3, 1, 16, 16\) for 2 seeds"),
    (torch.zeros(2, 3, 16, 16), r"returned images shaped \(2, 3, 16, 16\) for 2 seeds; expected \(n, C, R, R\) = \(2, 1, 16, 16\) \(data.channels 1"),
    (torch.zeros(2, 1, 16, 16).numpy(), r"returned a ndarray, not a torch.Tensor"),
    (torch.full((2, 1, 16, 16), 1.0005), None),  # within the tolerance
])
def test_the_output_contract_names_the_generator_and_the_fix(kit_registry, images, message):
    from raresynth import DataSpec
    from raresynth.evaluation.imagesets import check_samples

    generator = toy_plugin.ToyGenerator(toy_plugin.ToyParams(), DataSpec(16, 1))
    if message is None:
        assert check_samples(generator, images, [0, 1], registry=kit_registry) is images
        return
    with pytest.raises(PluginError, match=r"^generator 'toy' of plugin 'toy' \(package toy_plugin\): sample\(\) " + message):
        check_samples(generator, images, [0, 1], registry=kit_registry)
