"""The command line: train, sample, data inspect, plugins, errors as one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from raresynth.cli import main


@pytest.fixture
def trained_run(toy_config, registry, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "budget.kimg=0.064", "--no-progress"]) == 0
    return tmp_path / "run"


def test_train_dry_run_prints_resolved_config(toy_config, registry, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "generator.lr=0.01", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["generator"] == {"name": "toy", "lr": 0.01, "nan_at_step": -1}
    assert printed["data"]["format_options"]["held_out_fraction_of_area"] == 0.25  # plugin default filled in
    assert not (tmp_path / "run").exists()


def test_config_errors_are_one_line_each_without_traceback(toy_config, registry, tmp_path, capsys):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(toy_config()))
    assert main(["train", str(config_path), "generator.name=tyo", "batch_size=0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith(f"error: {config_path}: batch_size: ")
    assert err[1].startswith(f"error: {config_path}: generator.name: unknown generator 'tyo'")
    assert "Traceback" not in "".join(err)


def test_sample_writes_pngs_and_manifest_deterministically(trained_run, tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", str(trained_run), "--n", "3", "--seed", "5", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["seed"] for entry in manifest["images"]] == [5, 6, 7]
    assert [entry["class_name"] for entry in manifest["images"]] == ["fundus", "histology", "fundus"]
    assert manifest["checkpoint"] == "checkpoint-000000064.safetensors" and manifest["kimg"] == 0.064
    first = np.asarray(Image.open(out / "seed000005.png"))
    assert first.shape == (16, 16) and first.dtype == np.uint8 and first.std() > 0
    # the same seed gives the same image, also as part of another batch
    again = tmp_path / "again"
    assert main(["sample", str(trained_run), "--n", "1", "--seed", "6", "--out", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again / "seed000006.png")), np.asarray(Image.open(out / "seed000006.png")))
    # nothing is overwritten without --overwrite
    assert main(["sample", str(trained_run), "--n", "3", "--seed", "5", "--out", str(out)]) == 2
    assert "seed000005.png already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    # backend sampling options are validated by the backend's SampleParams
    assert main(["sample", str(trained_run), "--n", "1", "--out", str(tmp_path / "opt"), "scale=0"]) == 0
    flat = np.asarray(Image.open(tmp_path / "opt" / "seed000000.png")).astype(float)
    assert flat.std() < first.astype(float).std()  # no noise: the mean image
    assert main(["sample", str(trained_run), "--n", "1", "--out", str(tmp_path / "bad"), "sclae=0"]) == 2
    assert "sample option.sclae: unknown field; known fields: scale. Did you mean 'scale'?" in capsys.readouterr().err
    assert main(["sample", str(trained_run), "--n", "2", "--label", "histology", "--out", str(tmp_path / "h")]) == 0
    labels = {e["class_name"] for e in json.loads((tmp_path / "h" / "manifest.json").read_text())["images"]}
    assert labels == {"histology"}
    assert main(["sample", str(trained_run), "--label", "xray", "--out", str(tmp_path / "x")]) == 2
    assert "--label 'xray': not a class of this run; classes: fundus, histology" in capsys.readouterr().err


def test_sample_from_something_that_is_not_a_run(tmp_path, registry, capsys):
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {tmp_path}: not a raresynth run directory (no config.yaml)" in capsys.readouterr().err


def test_data_inspect_on_real_dicom_series(tmp_path, registry, capsys):
    from pydicom.data import get_testdata_file

    series = Path(get_testdata_file("dicomdirtests/98892003/MR700/4648")).parent
    assert main(["data", "inspect", str(series), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "dicom" and report["num_records"] == len(list(series.iterdir()))
    assert main(["data", "inspect", str(series)]) == 0
    assert "dicom" in capsys.readouterr().out


def test_bench_errors_are_one_line(registry, capsys, tmp_path):
    assert main(["bench", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.yaml'}: config file not found"
    (tmp_path / "bench.yaml").write_text("variants: {a: {generator: dcgan}}\nbase: {budget: {kimg: 1}, data: {format: embedded}}\n")
    assert main(["bench", str(tmp_path / "bench.yaml"), "--processes", "0", f"out_dir={tmp_path / 'out'}"]) == 2
    assert "--processes must be at least 1" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "bench.yaml"), "seedz=[1]"]) == 2
    assert "seedz: unknown field" in capsys.readouterr().err


def test_installed_console_script_runs(tmp_path):
    exe = Path(sys.executable).parent / "raresynth"
    command = [str(exe)] if exe.exists() else [shutil.which("raresynth") or "raresynth"]
    result = subprocess.run(command + ["plugins", "--json"], capture_output=True, text=True, env={**os.environ, "RARESYNTH_PLUGINS": "r1,formats"})
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert set(plugins) == {"r1", "formats"}
    assert plugins["r1"]["registers"] == {"regularizer": ["r1"]}
    result = subprocess.run([sys.executable, "-m", "raresynth", "--version"], capture_output=True, text=True)
    assert result.stdout.startswith("raresynth ")
