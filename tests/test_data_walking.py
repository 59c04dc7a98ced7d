"""Walking a source: links, loops, FIFOs and odd names never mislabel, duplicate or hang; skipped entries are reported.

Issue 11 (reliability audit), cases 2, 6 and 7 (the data share): every test here failed
before the fix (1804 records from 4 images; silent skips; tracebacks; exit status 0).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import yaml
from PIL import Image

from raresynth import DataError
from raresynth.cli import main
from raresynth.config import DataConfig, load_config
from raresynth.data import inspect_source, load_dataset
from raresynth.evaluation.imagesets import load_image_folder
from raresynth.training.rundir import write_data_json

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links and FIFOs")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Four different 32x32 RGB crops of a real histology image."""
    ihc = skimage.data.immunohistochemistry()
    return [np.ascontiguousarray(ihc[64 * i : 64 * i + 32, 100:132]) for i in range(4)]


def class_folders(root: Path, crops: list[np.ndarray]) -> Path:
    """``root/c1/{0,1}.png`` and ``root/c2/{2,3}.png``."""
    for i, crop in enumerate(crops):
        folder = root / ("c1" if i < 2 else "c2")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{i}.png")
    return root


def all_ids(dataset) -> list[str]:
    return sorted(dataset.split["train"] + dataset.split["held_out"])


def test_a_symlink_loop_in_a_class_folder_is_not_followed(tmp_path, format_registry, crops):
    source = class_folders(tmp_path / "d", crops)
    (source / "c2" / "up").symlink_to("..")  # the audit's `ln -s .. d/c2/up`
    dataset = load_dataset(DataConfig(source=str(source), resolution=16, split={"held_out_fraction": 0.5}), format_registry)
    assert all_ids(dataset) == ["c1/0.png", "c1/1.png", "c2/2.png", "c2/3.png"]
    assert not set(dataset.split["train"]) & set(dataset.split["held_out"])
    labels = {record_id: dataset.spec.class_names[int(label)]
              for side, image_set in (("train", dataset.train), ("held_out", dataset.held_out))
              for record_id, label in zip(dataset.split[side], image_set.labels)}
    assert labels == {"c1/0.png": "c1", "c1/1.png": "c1", "c2/2.png": "c2", "c2/3.png": "c2"}
    reasons = dict(dataset.skipped)
    assert list(reasons) == ["c2/up"]
    assert reasons["c2/up"].startswith(f"{source / 'c2' / 'up'}: symbolic link to a folder inside the source")
    write_data_json(dataset, tmp_path / "data.json")
    assert json.loads((tmp_path / "data.json").read_text())["skipped"] == [["c2/up", reasons["c2/up"]]]


def test_a_folder_linked_twice_from_outside_is_read_once(tmp_path, format_registry, crops):
    outside = class_folders(tmp_path / "elsewhere", crops) / "c1"
    source = tmp_path / "d"
    class_folders(source, crops[2:])  # d/c1/{0,1}.png: two more images
    (source / "linked").mkdir()
    (source / "linked" / "a").symlink_to(outside)  # followed: outside the source
    (source / "linked" / "b").symlink_to(outside)  # the same folder again: not followed
    dataset = load_dataset(DataConfig(source=str(source), resolution=16), format_registry)
    assert all_ids(dataset) == ["c1/0.png", "c1/1.png", "linked/a/0.png", "linked/a/1.png"]
    assert [record_id for record_id, _ in dataset.skipped] == ["linked/b"]
    assert "symbolic link to a folder already read" in dataset.skipped[0][1]


def test_one_file_by_two_paths_is_one_record_by_the_path_without_links(tmp_path, format_registry, crops):
    source = class_folders(tmp_path / "d", crops)
    (source / "c1" / "a_link.png").symlink_to(source / "c2" / "3.png")  # sorts before the real file's folder
    os.link(source / "c1" / "0.png", source / "c1" / "z_hardlink.png")
    dataset = load_dataset(DataConfig(source=str(source), resolution=16), format_registry)
    assert all_ids(dataset) == ["c1/0.png", "c1/1.png", "c2/2.png", "c2/3.png"]
    reasons = dict(dataset.skipped)
    assert sorted(reasons) == ["c1/a_link.png", "c1/z_hardlink.png"]
    assert reasons["c1/a_link.png"].endswith(f"the same file as {source / 'c2' / '3.png'}, listed once")
    assert reasons["c1/z_hardlink.png"].endswith(f"the same file as {source / 'c1' / '0.png'}, listed once")


def test_dangling_links_and_fifos_are_reported_not_opened(tmp_path, format_registry, crops):
    source = class_folders(tmp_path / "d", crops)
    (source / "c1" / "gone.png").symlink_to(source / "c1" / "never-there.png")
    os.mkfifo(source / "c2" / "pipe.png")  # opening it would block forever
    os.mkfifo(source / "c2" / "pipe.txt")  # not an image name: not a candidate, not reported
    report = inspect_source(source, registry=format_registry)
    assert (report.num_records, report.num_readable) == (4, 4)
    reasons = dict(report.problems)
    assert sorted(reasons) == ["c1/gone.png", "c2/pipe.png"]
    assert "dangling symbolic link" in reasons["c1/gone.png"] and "a FIFO" in reasons["c2/pipe.png"]
    dataset = load_dataset(DataConfig(source=str(source), resolution=16), format_registry)
    assert sorted(dict(dataset.skipped)) == ["c1/gone.png", "c2/pipe.png"] and len(all_ids(dataset)) == 4


def test_dicom_folder_with_a_fifo_and_a_loop(tmp_path, format_registry):
    from medical_files import PYDICOM_FILES

    for name in ("CT_small.dcm", "MR_small.dcm"):
        (tmp_path / name).write_bytes((PYDICOM_FILES / name).read_bytes())
    os.mkfifo(tmp_path / "pipe")  # a DICOM folder reads files without extension: this one must not be opened
    (tmp_path / "loop").symlink_to(".")
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=16), format_registry)
    assert all_ids(dataset) == ["CT_small.dcm", "MR_small.dcm"]
    assert sorted(dict(dataset.skipped)) == ["loop", "pipe"]


def test_image_folder_metrics_read_each_file_once(tmp_path, crops):
    folder = class_folders(tmp_path / "synthetic", crops)
    (folder / "c1" / "again.png").symlink_to(folder / "c1" / "0.png")
    images = load_image_folder(folder, resolution=16, channels=3, class_names=("c1", "c2"))
    assert len(images) == 4 and images.labels.tolist() == [0, 0, 1, 1]


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS file systems only store UTF-8 names")
def test_a_file_name_that_is_not_utf8(tmp_path, format_registry, crops):
    source = tmp_path / "d"
    source.mkdir()
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(os.path.join(os.fsencode(source), f"img{i}\xff.png".encode("latin-1")))
    (Path(os.fsdecode(os.path.join(os.fsencode(source), b"broken\xff.png")))).write_bytes(b"not a png")
    dataset = load_dataset(DataConfig(source=str(source), resolution=16, on_bad_file="skip"), format_registry)
    assert len(all_ids(dataset)) == 4 and len(dataset.split["held_out"]) >= 1
    assert main(["data", "inspect", str(source)]) == 0  # prints the odd name without a traceback


def test_data_inspect_fails_when_no_image_is_readable(tmp_path, capsys):
    (tmp_path / "a.png").write_text("not an image\n")
    (tmp_path / "b.png").write_bytes(b"")
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: none of the 2 image(s) is readable; first problem: ")


def test_labels_csv_that_is_not_utf8(tmp_path, format_registry, crops):
    source = class_folders(tmp_path / "d", crops)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes("file,label\nc1/0.png,b\xe9nin\nc1/1.png,a\nc2/2.png,a\nc2/3.png,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"labels\.csv: not UTF-8 text \(byte 0xe9 on line 2\); save the labels CSV as UTF-8"):
        load_dataset(DataConfig(source=str(source), resolution=16, labels=str(csv_path)), format_registry)
    csv_path.write_bytes("\ufefffile,label\nc1/0.png,b\xe9nin\nc1/1.png,a\nc2/2.png,a\nc2/3.png,a\n".encode("utf-8"))  # UTF-8 with BOM
    dataset = load_dataset(DataConfig(source=str(source), resolution=16, labels=str(csv_path)), format_registry)
    assert dataset.spec.class_names == ("a", "bénin")


def test_labels_csv_is_relative_to_the_config_file(tmp_path, format_registry, crops, monkeypatch):
    project = tmp_path / "project"
    class_folders(project / "d", crops)
    (project / "labels.csv").write_text("file,label\nc1/0.png,x\nc1/1.png,y\nc2/2.png,x\nc2/3.png,y\n")
    config_path = project / "run.yaml"
    config_path.write_text(yaml.safe_dump({"run_dir": "r", "generator": "toy", "budget": {"kimg": 1}, "data": {"source": "d", "labels": "labels.csv"}}))
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(config_path)
    assert config.data.labels == str(project / "labels.csv") and config.data.source == str(project / "d")
    assert load_dataset(config.data.model_copy(update={"resolution": 16}), format_registry).spec.class_names == ("x", "y")
    config_path.write_text(yaml.safe_dump({"run_dir": "r", "generator": "toy", "budget": {"kimg": 1}, "data": {"source": "d", "labels": str(project / "labels.csv")}}))
    assert load_config(config_path).data.labels == str(project / "labels.csv")  # an absolute path stays
    config_path.write_text(yaml.safe_dump({"run_dir": "r", "generator": "toy", "budget": {"kimg": 1}, "data": {"source": "d", "labels": "none"}}))
    assert load_config(config_path).data.labels == "none"


def test_an_animated_gif_renamed_png_is_refused(tmp_path, format_registry, crops):
    source = class_folders(tmp_path / "d", crops)
    frames = [Image.fromarray(crop) for crop in crops]
    frames[0].save(source / "c1" / "movie.png", format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"movie\.png: an animated GIF image with 4 frames; raresynth reads still images"):
        load_dataset(DataConfig(source=str(source), resolution=16), format_registry)
    dataset = load_dataset(DataConfig(source=str(source), resolution=16, on_bad_file="skip"), format_registry)
    assert [record_id for record_id, _ in dataset.skipped] == ["c1/movie.png"]


def test_labels_csv_in_a_benchmark_is_relative_to_the_benchmark_file(tmp_path, monkeypatch):
    from raresynth.bench.plan import load_benchmark

    project = tmp_path / "project"
    project.mkdir()
    path = project / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "out_dir": "out", "seeds": [0], "metrics": ["mean_gap"],
        "base": {"data": {"source": "d", "labels": "labels.csv"}, "budget": {"kimg": 1}},
        "variants": {"toy": {"generator": {"name": "toy"}}},
    }))
    monkeypatch.chdir(tmp_path)
    data = load_benchmark(path).base["data"]
    assert (data["source"], data["labels"]) == (str(project / "d"), str(project / "labels.csv"))


def test_an_unreadable_file_is_reported_not_read(tmp_path, format_registry, crops, monkeypatch):
    """``chmod 000`` (as root, which reads anything, the permission check is simulated)."""
    from raresynth.plugins.formats import _files

    source = class_folders(tmp_path / "d", crops)
    locked = source / "c1" / "1.png"
    locked.chmod(0)
    if os.geteuid() == 0:
        monkeypatch.setattr(_files.os, "access", lambda path, mode: Path(path) != locked)
    dataset = load_dataset(DataConfig(source=str(source), resolution=16), format_registry)
    assert all_ids(dataset) == ["c1/0.png", "c2/2.png", "c2/3.png"]
    assert dataset.skipped == [("c1/1.png", f"{locked}: not readable (permission denied)")]


def test_an_animated_png_in_a_synthetic_folder_is_refused(tmp_path, crops):
    folder = tmp_path / "synthetic"
    folder.mkdir()
    Image.fromarray(crops[0]).save(folder / "0.png")
    frames = [Image.fromarray(crop) for crop in crops[1:]]
    frames[0].save(folder / "1.png", format="PNG", save_all=True, append_images=frames[1:])  # APNG, 3 frames
    with pytest.raises(DataError, match=r"1\.png: an animated PNG image with 3 frames; give still images"):
        load_image_folder(folder, resolution=16, channels=3)
