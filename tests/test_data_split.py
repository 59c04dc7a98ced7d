"""The train / held-out split: deterministic, group-aware, stratified, and checked on resume."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import skimage.data
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image

from raresynth import DataError
from raresynth.config import DataConfig, SplitConfig
from raresynth.data import check_split, load_dataset, load_split, save_split, split_records
from raresynth.registry import load_plugins

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped with pydicom, no download
ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"


@pytest.fixture(scope="module")
def registry():
    return load_plugins(only=["formats"])


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Path:
    """16 histology crops in class ``ihc`` and 8 microscopy crops in class ``cell`` (32x32 PNG)."""
    root = tmp_path_factory.mktemp("two_classes")
    ihc = skimage.data.immunohistochemistry()
    cell = skimage.data.cell()
    for name, image, count in (("ihc", ihc, 16), ("cell", cell, 8)):
        (root / name).mkdir()
        for i in range(count):
            y, x = divmod(i, 4)
            Image.fromarray(image[y * 96 : y * 96 + 96 : 3, x * 96 : x * 96 + 96 : 3]).save(root / name / f"{name}{i:02d}.png")
    return root


def scan(registry, name: str, source: Path, **options):
    cls = registry.data_format(name)
    return cls(cls.Params(**options)).scan(source)


def ids(records) -> list[str]:
    return [record.id for record in records]


def test_split_is_deterministic_for_a_seed_and_changes_with_it(registry, two_classes):
    config = DataConfig(source=str(two_classes), resolution=16)
    first, again = load_dataset(config, registry), load_dataset(config, registry)
    assert first.split == again.split
    assert torch_equal(first.train.images, again.train.images)
    records = scan(registry, "image_folder", two_classes)
    held_out_by_seed = {tuple(ids(split_records(records, SplitConfig(seed=seed))[1])) for seed in range(4)}
    assert len(held_out_by_seed) > 1


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_split_does_not_depend_on_scan_order(registry, two_classes):
    records = scan(registry, "image_folder", two_classes)
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    for order in (records, records[::-1], shuffled):
        train, held_out = split_records(order, SplitConfig(seed=7))
        assert (ids(train), ids(held_out)) == tuple(ids(part) for part in split_records(records, SplitConfig(seed=7)))


def test_split_is_stratified_by_label(registry, two_classes):
    dataset = load_dataset(DataConfig(source=str(two_classes), resolution=16), registry)
    held_out = dataset.split["held_out"]
    assert sum(i.startswith("ihc/") for i in held_out) == 3  # round(0.2 * 16)
    assert sum(i.startswith("cell/") for i in held_out) == 2  # round(0.2 * 8)
    assert dataset.spec.class_names == ("cell", "ihc") and dataset.spec.num_train == 19
    expected = [dataset.spec.class_names.index(i.split("/")[0]) for i in dataset.split["train"]]
    assert dataset.train.labels.tolist() == expected
    quarter = load_dataset(DataConfig(source=str(two_classes), resolution=16, split=SplitConfig(held_out_fraction=0.25)), registry)
    assert len(quarter.held_out) == 4 + 2


def test_small_classes_hold_out_one_group_but_never_all(registry, tmp_path):
    cell = skimage.data.cell()
    for name, count in (("pair", 2), ("single", 1), ("many", 6)):
        for i in range(count):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(cell[i * 40 : i * 40 + 32, :32]).save(tmp_path / name / f"{i}.png")
    train, held_out = split_records(scan(registry, "image_folder", tmp_path), SplitConfig(held_out_fraction=0.1))
    held = [i.split("/")[0] for i in ids(held_out)]
    assert sorted(held) == ["many", "pair"]  # at least one of 2 or more groups; the single one trains
    assert "single/0.png" in ids(train)


def test_slices_of_one_volume_never_land_on_both_sides(registry, tmp_path):
    for i in range(5):
        shutil.copy(ANATOMICAL, tmp_path / f"subject{i}.nii")
    records = scan(registry, "nifti", tmp_path)
    for seed in range(3):
        train, held_out = split_records(records, SplitConfig(seed=seed))
        train_volumes = {record.group for record in train}
        held_out_volumes = {record.group for record in held_out}
        assert not train_volumes & held_out_volumes
        assert len(held_out_volumes) == 1 and len(train_volumes) == 4  # round(0.2 * 5) volumes


def test_labels_csv_can_name_whole_volumes(registry, tmp_path):
    for i in range(4):
        shutil.copy(ANATOMICAL, tmp_path / f"subject{i}.nii")
    labels = tmp_path.parent / f"{tmp_path.name}_labels.csv"
    labels.write_text("file,label\n" + "".join(f"subject{i}.nii,{'tumor' if i % 2 else 'healthy'}\n" for i in range(4)))
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=16, labels=str(labels)), registry)
    assert dataset.spec.class_names == ("healthy", "tumor")
    held_out_volumes = {i.split("#")[0] for i in dataset.split["held_out"]}
    assert len(held_out_volumes) == 2  # one volume of each class (at least one of two groups)
    assert set(dataset.held_out.labels.tolist()) == {0, 1}


def test_the_sources_own_split_is_kept(registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(10, axis=0)  # (10, 28, 28)
    np.savez(tmp_path / "m.npz", train_images=images[:6], train_labels=np.zeros((6, 1)).astype(int), test_images=images[6:], test_labels=np.ones((4, 1)).astype(int))
    for seed in range(3):
        config = DataConfig(source=str(tmp_path / "m.npz"), resolution=16, split=SplitConfig(seed=seed))
        assert load_dataset(config, registry).split["held_out"] == ["test#0", "test#1", "test#2", "test#3"]
    records = scan(registry, "npz", tmp_path / "m.npz", use_file_split=False)
    assert any(i.startswith("train#") for i in ids(split_records(records, SplitConfig())[1]))


def test_an_empty_training_split_is_an_error(registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(3, axis=0)
    np.savez(tmp_path / "test_only.npz", test_images=images, test_labels=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"test_only\.npz: the training split is empty \(3 images, all held out"):
        load_dataset(DataConfig(source=str(tmp_path / "test_only.npz"), resolution=16), registry)


def test_class_indices_follow_sorted_class_names(registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(6, axis=0)
    np.savez(tmp_path / "m.npz", images=images, labels=np.array([10, 2, 10, 2, 10, 2]))
    dataset = load_dataset(DataConfig(source=str(tmp_path / "m.npz"), resolution=16), registry)
    assert dataset.spec.class_names == ("2", "10")  # numbers compare as numbers
    by_id = dict(zip(dataset.split["train"], dataset.train.labels.tolist())) | dict(zip(dataset.split["held_out"], dataset.held_out.labels.tolist()))
    assert by_id["images#0"] == 1 and by_id["images#1"] == 0
    unlabelled = load_dataset(DataConfig(source=str(tmp_path / "m.npz"), resolution=16, labels="none"), registry)
    assert unlabelled.spec.class_names == () and unlabelled.train.labels is None


def test_saved_split_holds_ids_only_and_detects_changed_data(registry, tmp_path):
    source = tmp_path / "dicom"
    shutil.copytree(PYDICOM_FILES / "dicomdirtests" / "98892003" / "MR700", source / "series")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(PYDICOM_FILES / name, source / name)
    config = DataConfig(source=str(source), resolution=16)
    dataset = load_dataset(config, registry)
    save_split(dataset, tmp_path / "split.json")
    saved = load_split(tmp_path / "split.json")
    assert saved == dataset.split
    text = (tmp_path / "split.json").read_text()
    assert set(json.loads(text)) == {"format", "train", "held_out"}
    for path in source.rglob("*"):
        if path.is_file():
            header = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate"):
                value = str(header.get(keyword, "") or "")
                assert not value or value not in text, f"{keyword} leaked into the saved split"
    check_split(load_dataset(config, registry), saved)  # unchanged data: no error
    (source / dataset.split["train"][0]).unlink()
    with pytest.raises(DataError, match=r"^data\.source changed since this run started: 1 training images differ"):
        check_split(load_dataset(config, registry), saved)
