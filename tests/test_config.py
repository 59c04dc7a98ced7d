"""Run config: validation messages, plugin params, overrides, resolution."""

from __future__ import annotations

import pytest
import yaml

from raresynth.config import apply_overrides, load_config
from raresynth.errors import ConfigError, PluginError

BASE = {"data": {"format": "embedded"}, "generator": {"name": "toy"}, "budget": {"kimg": 1}}


def with_changes(*overrides):
    return apply_overrides(BASE, list(overrides))


def error_lines(registry, data, *overrides):
    with pytest.raises((ConfigError, PluginError)) as excinfo:
        load_config(data, overrides, registry=registry)
    return str(excinfo.value).splitlines()


def test_valid_config_fills_plugin_defaults(registry):
    config = load_config(BASE, registry=registry)
    assert config.generator.params == {"lr": 0.05, "nan_at_step": -1}
    assert config.batch_size == 16 and config.precision == "no"
    assert config.data.format_options["train_per_class"] == 150  # embedded's own default


def test_unknown_generator_lists_installed_and_suggests(registry):
    (line,) = error_lines(registry, with_changes("generator.name=dcgna"))
    assert line.startswith("config: generator.name: unknown generator 'dcgna'; installed: dcgan, ")
    assert ", toy" in line
    assert line.endswith("Did you mean 'dcgan'?")


def test_wrong_type_names_the_field_path(registry):
    (line,) = error_lines(registry, with_changes("batch_size=big"))
    assert line.startswith("config: batch_size: ")
    assert "integer" in line


def test_range_errors_name_the_field(registry):
    lines = error_lines(registry, with_changes("data.resolution=48", "budget.kimg=0"))
    assert "config: data.resolution: must be a power of two between 4 and 4096 (got 48)" in lines
    assert any(line.startswith("config: budget.kimg: ") and "greater than 0" in line for line in lines)


def test_unknown_core_field_suggests(registry):
    (line,) = error_lines(registry, with_changes("batch_sise=4"))
    assert line.startswith("config: batch_sise: unknown field; known fields: run_dir, seed, data,")
    assert line.endswith("Did you mean 'batch_size'?")
    (line,) = error_lines(registry, with_changes("data.resolutoin=32"))
    assert line.startswith("config: data.resolutoin: unknown field") and "Did you mean 'resolution'?" in line


def test_plugin_params_validated_by_plugin_schema(registry):
    (line,) = error_lines(registry, with_changes("generator.lrr=0.1"))
    assert line.startswith("config: generator.lrr: unknown field; known fields: lr, nan_at_step.")
    assert line.endswith("Did you mean 'lr'?")
    (line,) = error_lines(registry, with_changes("generator.lr=-1"))
    assert line.startswith("config: generator.lr: ") and "greater than 0" in line
    (line,) = error_lines(registry, with_changes("data.format_options.crop_sise=8"))
    assert line.startswith("config: data.format_options.crop_sise: unknown field")


def test_unquoted_no_means_no_mixed_precision(registry):
    assert load_config(BASE, ["precision=no"], registry=registry).precision == "no"
    assert load_config({**BASE, "precision": False}, registry=registry).precision == "no"


def test_unknown_nested_field_lists_the_nested_fields(registry):
    (line,) = error_lines(registry, with_changes("data.intensity.windw=[1, 2]"))
    assert line.startswith("config: data.intensity.windw: unknown field; known fields: mode, percentiles, window.")


def test_literal_error_shows_choices_and_value(registry):
    (line,) = error_lines(registry, with_changes("precision=fp8"))
    assert line.startswith("config: precision: ") and "'no', 'fp16' or 'bf16'" in line and "'fp8'" in line


def test_regularizer_params_and_role(registry):
    data = with_changes("regularizers=[{name: shrink, weight: 0.5}]")
    config = load_config(data, ["regularizers.0.weight=0.25"], registry=registry)
    assert config.regularizers[0].params == {"weight": 0.25, "every": 2}
    (line,) = error_lines(registry, data, "regularizers.0.wieght=1")
    assert line.startswith("config: regularizers.0.wieght: unknown field") and "Did you mean 'weight'?" in line
    (line,) = error_lines(registry, with_changes("regularizers=[{name: shrinq}]"))
    assert line.startswith("config: regularizers.0.name: unknown regularizer 'shrinq'") and "Did you mean 'shrink'?" in line


def test_regularizer_for_a_role_the_generator_lacks(registry):
    from raresynth import PenaltyInputs, PluginParams, Regularizer, hookimpl
    from raresynth.registry import load_plugins

    class DOnly(Regularizer):
        role = "discriminator"

        def penalty(self, inputs: PenaltyInputs):
            return 0

    class Plugin:
        @hookimpl
        def raresynth_register_regularizers(self, register):
            register("d_only", DOnly)

    import toy_plugin

    reg = load_plugins(extra=[("toy", toy_plugin), ("donly", Plugin())])
    (line,) = error_lines(reg, with_changes("regularizers=[d_only]"))
    assert "regularizer 'd_only' applies to the discriminator, which generator 'toy' does not have" in line
    assert PluginParams  # the base class every Params derives from


def test_overrides_parse_yaml_values_and_reject_bad_paths():
    data = apply_overrides(BASE, ["generator.name=dcgan", "budget.kimg=2.5", "data.labels=none", "schedule.tick_kimg=1e-1"])
    assert data["generator"]["name"] == "dcgan" and data["budget"]["kimg"] == 2.5
    assert data["data"]["labels"] == "none" and data["schedule"]["tick_kimg"] == 0.1
    assert BASE["generator"]["name"] == "toy"  # the input is not modified
    with pytest.raises(ConfigError, match=r"regularizers.0: the list has 0 item\(s\)"):
        apply_overrides({"regularizers": []}, ["regularizers.0.gamma=1"])
    with pytest.raises(ConfigError, match="expected dotted.path=value"):
        apply_overrides(BASE, ["budget.kimg"])
    with pytest.raises(ConfigError, match="budget.kimg is a value"):
        apply_overrides(BASE, ["budget.kimg.x=1"])


def test_yaml_file_errors_and_relative_source(tmp_path, registry):
    bad = tmp_path / "bad.yaml"
    bad.write_text("generator: {name: toy\nbudget: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line \d+, column \d+\)"):
        load_config(bad, registry=registry)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "images").mkdir()
    good = tmp_path / "sub" / "run.yaml"
    good.parent.mkdir()
    good.write_text(yaml.safe_dump({"data": {"format": "image_folder", "source": "../images"}, "generator": {"name": "toy"}, "budget": {"kimg": 1}}))
    config = load_config(good, registry=registry)
    assert config.data.source == str(tmp_path / "images")  # relative to the file, normalized
    spelt_otherwise = {"data": {"format": "image_folder", "source": str(tmp_path / "sub" / ".." / "images")},
                       "generator": {"name": "toy"}, "budget": {"kimg": 1}}
    assert load_config(spelt_otherwise, registry=registry).data == config.data  # the same folder: a run resumes with either


def test_missing_required_fields(registry):
    lines = error_lines(registry, {"data": {"format": "embedded"}})
    assert "config: generator: required field is missing" in lines
    assert "config: budget: required field is missing" in lines
    (line,) = error_lines(registry, with_changes("data.format=image_folder"))
    assert line == "config: data.source: format 'image_folder' reads files: set data.source to a file or folder"


def test_fp16_without_gpu_is_refused(registry):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (line,) = error_lines(registry, with_changes("precision=fp16"))
    assert line == "config: precision: fp16 needs a CUDA GPU; use 'bf16' or 'no' on this machine"
