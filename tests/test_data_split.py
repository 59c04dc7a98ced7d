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

from medical_files import write_patient_series
from raresynth import ConfigError, DataError
from raresynth.config import DataConfig, SplitConfig, load_config
from raresynth.data import check_split, group_records, load_dataset, load_split, save_split, split_records
from raresynth.registry import load_plugins
from raresynth.training.rundir import write_data_json

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped with pydicom, no download
ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"


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


def scan(format_registry, name: str, source: Path, **options):
    cls = format_registry.data_format(name)
    return cls(cls.Params(**options)).scan(source)


def ids(records) -> list[str]:
    return [record.id for record in records]


def test_split_is_deterministic_for_a_seed_and_changes_with_it(format_registry, two_classes):
    config = DataConfig(source=str(two_classes), resolution=16)
    first, again = load_dataset(config, format_registry), load_dataset(config, format_registry)
    assert first.split == again.split
    assert torch_equal(first.train.images, again.train.images)
    records = scan(format_registry, "image_folder", two_classes)
    held_out_by_seed = {tuple(ids(split_records(records, SplitConfig(seed=seed))[1])) for seed in range(4)}
    assert len(held_out_by_seed) > 1


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_split_does_not_depend_on_scan_order(format_registry, two_classes):
    records = scan(format_registry, "image_folder", two_classes)
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    for order in (records, records[::-1], shuffled):
        train, held_out = split_records(order, SplitConfig(seed=7))
        assert (ids(train), ids(held_out)) == tuple(ids(part) for part in split_records(records, SplitConfig(seed=7)))


def test_split_is_stratified_by_label(format_registry, two_classes):
    dataset = load_dataset(DataConfig(source=str(two_classes), resolution=16), format_registry)
    held_out = dataset.split["held_out"]
    assert sum(i.startswith("ihc/") for i in held_out) == 3  # round(0.2 * 16)
    assert sum(i.startswith("cell/") for i in held_out) == 2  # round(0.2 * 8)
    assert dataset.spec.class_names == ("cell", "ihc") and dataset.spec.num_train == 19
    expected = [dataset.spec.class_names.index(i.split("/")[0]) for i in dataset.split["train"]]
    assert dataset.train.labels.tolist() == expected
    quarter = load_dataset(DataConfig(source=str(two_classes), resolution=16, split=SplitConfig(held_out_fraction=0.25)), format_registry)
    assert len(quarter.held_out) == 4 + 2


def test_small_classes_hold_out_one_group_but_never_all(format_registry, tmp_path):
    cell = skimage.data.cell()
    for name, count in (("pair", 2), ("single", 1), ("many", 6)):
        for i in range(count):
            (tmp_path / name).mkdir(exist_ok=True)
            Image.fromarray(cell[i * 40 : i * 40 + 32, :32]).save(tmp_path / name / f"{i}.png")
    train, held_out = split_records(scan(format_registry, "image_folder", tmp_path), SplitConfig(held_out_fraction=0.1))
    held = [i.split("/")[0] for i in ids(held_out)]
    assert sorted(held) == ["many", "pair"]  # at least one of 2 or more groups; the single one trains
    assert "single/0.png" in ids(train)


def test_slices_of_one_volume_never_land_on_both_sides(format_registry, tmp_path):
    for i in range(5):
        shutil.copy(ANATOMICAL, tmp_path / f"subject{i}.nii")
    records = scan(format_registry, "nifti", tmp_path)
    for seed in range(3):
        train, held_out = split_records(records, SplitConfig(seed=seed))
        train_volumes = {record.group for record in train}
        held_out_volumes = {record.group for record in held_out}
        assert not train_volumes & held_out_volumes
        assert len(held_out_volumes) == 1 and len(train_volumes) == 4  # round(0.2 * 5) volumes


def test_a_single_volume_gives_an_empty_held_out_set_of_the_right_shape(format_registry, tmp_path):
    """One group cannot be split: every slice trains, and the held-out set is empty but shaped like the images."""
    shutil.copy(ANATOMICAL, tmp_path / "subject0.nii")
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=16), format_registry)
    assert len(dataset.train) > 0 and dataset.split["held_out"] == []
    assert tuple(dataset.held_out.images.shape) == (0, *dataset.train.images.shape[1:])


def test_labels_csv_can_name_whole_volumes(format_registry, tmp_path):
    for i in range(4):
        shutil.copy(ANATOMICAL, tmp_path / f"subject{i}.nii")
    labels = tmp_path.parent / f"{tmp_path.name}_labels.csv"
    labels.write_text("file,label\n" + "".join(f"subject{i}.nii,{'tumor' if i % 2 else 'healthy'}\n" for i in range(4)))
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=16, labels=str(labels)), format_registry)
    assert dataset.spec.class_names == ("healthy", "tumor")
    held_out_volumes = {i.split("#")[0] for i in dataset.split["held_out"]}
    assert len(held_out_volumes) == 2  # one volume of each class (at least one of two groups)
    assert set(dataset.held_out.labels.tolist()) == {0, 1}


def test_a_labels_csv_column_can_group_whole_volumes(format_registry, tmp_path):
    """column:NAME rows may name a volume file: its slices (``subject0.nii#z=3``) take that row's group."""
    for i in range(6):
        shutil.copy(ANATOMICAL, tmp_path / f"subject{i}.nii")
    labels = tmp_path.parent / f"{tmp_path.name}_labels.csv"
    patient = {f"subject{i}.nii": f"P{i // 2}" for i in range(6)}  # two scans per patient
    labels.write_text("file,label,patient\n" + "".join(f"{name},c,{p}\n" for name, p in patient.items()))
    for seed in range(3):
        config = DataConfig(source=str(tmp_path), resolution=16, labels=str(labels), split=SplitConfig(seed=seed, group_by="column:patient"))
        dataset = load_dataset(config, format_registry)
        sides = {side: {patient[i.split("#")[0]] for i in dataset.split[side]} for side in ("train", "held_out")}
        assert sides["held_out"] and not sides["train"] & sides["held_out"]


def test_a_format_failing_to_read_an_attribute_names_the_file(format_registry, monkeypatch):
    from raresynth.plugins.formats.dicom import Dicom

    def broken(self, record, attribute):
        raise RuntimeError("header parser bug")

    monkeypatch.setattr(Dicom, "attribute_value", broken)
    config = DataConfig(source=str(PYDICOM_FILES / "dicomdirtests" / "98892003" / "MR700"), resolution=16)
    with pytest.raises(DataError, match=r"MR700/\S+.*: format 'dicom' could not read its PatientID: RuntimeError: header parser bug$"):
        load_dataset(config, format_registry)


def test_the_sources_own_split_is_kept(format_registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(10, axis=0)  # (10, 28, 28)
    np.savez(tmp_path / "m.npz", train_images=images[:6], train_labels=np.zeros((6, 1)).astype(int), test_images=images[6:], test_labels=np.ones((4, 1)).astype(int))
    for seed in range(3):
        config = DataConfig(source=str(tmp_path / "m.npz"), resolution=16, split=SplitConfig(seed=seed))
        assert load_dataset(config, format_registry).split["held_out"] == ["test#0", "test#1", "test#2", "test#3"]
    records = scan(format_registry, "npz", tmp_path / "m.npz", use_file_split=False)
    assert any(i.startswith("train#") for i in ids(split_records(records, SplitConfig())[1]))


def test_an_empty_training_split_is_an_error(format_registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(3, axis=0)
    np.savez(tmp_path / "test_only.npz", test_images=images, test_labels=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"test_only\.npz: the training split is empty \(3 images, all held out"):
        load_dataset(DataConfig(source=str(tmp_path / "test_only.npz"), resolution=16), format_registry)


def test_class_indices_follow_sorted_class_names(format_registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(6, axis=0)
    np.savez(tmp_path / "m.npz", images=images, labels=np.array([10, 2, 10, 2, 10, 2]))
    dataset = load_dataset(DataConfig(source=str(tmp_path / "m.npz"), resolution=16), format_registry)
    assert dataset.spec.class_names == ("2", "10")  # numbers compare as numbers
    by_id = dict(zip(dataset.split["train"], dataset.train.labels.tolist())) | dict(zip(dataset.split["held_out"], dataset.held_out.labels.tolist()))
    assert by_id["images#0"] == 1 and by_id["images#1"] == 0
    unlabelled = load_dataset(DataConfig(source=str(tmp_path / "m.npz"), resolution=16, labels="none"), format_registry)
    assert unlabelled.spec.class_names == () and unlabelled.train.labels is None


def saved_dicom_split(format_registry, tmp_path, single_files=("CT_small.dcm", "MR_small.dcm")):
    """pydicom's MR700 series (and single files) copied to ``tmp_path/dicom``, loaded and its split saved.

    Returns ``(source, config, dataset, saved split)``.
    """
    source = tmp_path / "dicom"
    shutil.copytree(PYDICOM_FILES / "dicomdirtests" / "98892003" / "MR700", source / "series")
    for name in single_files:
        shutil.copy(PYDICOM_FILES / name, source / name)
    config = DataConfig(source=str(source), resolution=16)
    dataset = load_dataset(config, format_registry)
    save_split(dataset, tmp_path / "split.json")
    return source, config, dataset, load_split(tmp_path / "split.json")


def test_saved_split_holds_ids_only_and_detects_changed_data(format_registry, tmp_path):
    source, config, dataset, saved = saved_dicom_split(format_registry, tmp_path)
    assert {side: saved[side] for side in ("train", "held_out")} == dataset.split
    text = (tmp_path / "split.json").read_text()
    assert set(json.loads(text)) == {"format", "grouping", "train", "held_out", "content"}
    for path in source.rglob("*"):
        if path.is_file():
            header = pydicom.dcmread(path, stop_before_pixels=True)
            for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate"):
                value = str(header.get(keyword, "") or "")
                assert not value or value not in text, f"{keyword} leaked into the saved split"
    check_split(load_dataset(config, format_registry), saved)  # unchanged data: no error
    (source / dataset.split["train"][0]).unlink()
    with pytest.raises(DataError, match=r"^data\.source changed since this run started: 1 training images differ") as info:
        check_split(load_dataset(config, format_registry), saved)
    assert "predates" not in str(info.value)  # this run saved its grouping: no note about older runs


def test_resume_detects_an_image_replaced_under_the_same_name(format_registry, tmp_path):
    """Same file names, other pixels (a re-export, a file overwritten by another patient's): the split is the same, the data is not."""
    source, config, dataset, saved = saved_dicom_split(format_registry, tmp_path, single_files=())
    first, second = (source / record_id for record_id in dataset.split["train"][:2])
    one, two = first.read_bytes(), second.read_bytes()
    first.write_bytes(two)  # the two training files swap their images
    second.write_bytes(one)
    reloaded = load_dataset(config, format_registry)
    assert reloaded.split == dataset.split  # ids alone cannot tell
    expected = min(dataset.split["train"][:2])
    with pytest.raises(DataError, match=rf"^data\.source changed since this run started: 2 images have other pixels under the same name "
                                        rf"\(e.g. '{expected}'\)"):
        check_split(reloaded, saved)
    first.write_bytes(one)
    second.write_bytes(two)
    check_split(load_dataset(config, format_registry), saved)  # restored: accepted again
    # runs started before digests (and before group_by) were saved are checked by their ids only
    for older in ({k: v for k, v in saved.items() if k != "content"}, {k: v for k, v in saved.items() if k not in ("content", "grouping")}):
        check_split(reloaded, older)


def test_resume_detects_a_removed_held_out_image(format_registry, tmp_path):
    """A held-out image removed: the check counts the held-out side too (it decides what the metrics compare with).

    The split is redone over the remaining files, so a training image moves as well; the message counts both sides.
    """
    source, config, dataset, saved = saved_dicom_split(format_registry, tmp_path)
    (source / dataset.split["held_out"][0]).unlink()
    with pytest.raises(DataError, match=r"^data\.source changed since this run started: 1 training images and 2 held-out images differ"):
        check_split(load_dataset(config, format_registry), saved)



# ---------------------------------------------------------------------------
# data.split.group_by: patients, never on both sides
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patients(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """Real DICOM files rewritten as 6 patients with 2 series (2 files each) per patient."""
    folder = tmp_path_factory.mktemp("patients") / "dicom"
    return folder, write_patient_series(folder)


def patient_of(by_patient: dict[str, list[str]]) -> dict[str, str]:
    return {name: patient for patient, names in by_patient.items() for name in names}


def series_of(folder: Path, record_ids) -> dict[str, str]:
    return {i: str(pydicom.dcmread(folder / i, stop_before_pixels=True).SeriesInstanceUID) for i in record_ids}


def sides(dataset) -> dict[str, str]:
    return {i: side for side in ("train", "held_out") for i in dataset.split[side]}


def crossing(side_of: dict[str, str], group_of: dict[str, str]) -> set[str]:
    """The groups with images on both sides."""
    seen: dict[str, set[str]] = {}
    for record_id, side in side_of.items():
        seen.setdefault(group_of[record_id], set()).add(side)
    return {group for group, found in seen.items() if len(found) > 1}


def test_dicom_is_split_by_patient_and_a_patient_never_crosses(format_registry, patients):
    folder, by_patient = patients
    owner = patient_of(by_patient)
    series = series_of(folder, owner)
    series_crossed = 0
    for seed in range(6):
        dataset = load_dataset(DataConfig(source=str(folder), resolution=16, split=SplitConfig(seed=seed)), format_registry)
        assert dataset.grouping.group_by == "PatientID"  # the DICOM default
        assert not crossing(sides(dataset), owner)
        held_out_patients = {owner[i] for i in dataset.split["held_out"]}
        assert len(held_out_patients) == 1  # round(0.2 * 6) patients, with all their images
        assert sorted(dataset.split["held_out"]) == by_patient[held_out_patients.pop()]
        by_series = load_dataset(DataConfig(source=str(folder), resolution=16, split=SplitConfig(seed=seed, group_by="format")), format_registry)
        assert not crossing(sides(by_series), series)  # a series stays together...
        series_crossed += bool(crossing(sides(by_series), owner))  # ...but a patient's two series may not
        by_uid = load_dataset(DataConfig(source=str(folder), resolution=16, split=SplitConfig(seed=seed, group_by="SeriesInstanceUID")), format_registry)
        assert len(set(by_uid.grouping.keys.values())) == 12 and not crossing(sides(by_uid), series)
    assert series_crossed > 0  # the leak group_by: PatientID closes


def test_split_json_records_the_grouping_and_no_patient_identifier(format_registry, patients, tmp_path):
    folder, by_patient = patients
    owner = patient_of(by_patient)
    dataset = load_dataset(DataConfig(source=str(folder), resolution=16), format_registry)
    save_split(dataset, tmp_path / "split.json")
    write_data_json(dataset, tmp_path / "data.json")
    saved = json.loads((tmp_path / "split.json").read_text())
    grouping = saved["grouping"]
    assert grouping["group_by"] == "PatientID" and grouping["fallback_to_format_group"] == 0
    assert grouping["groups"] == {"train": 5, "held_out": 1}
    keys = grouping["keys"]
    assert set(keys) == set(owner)
    for names in by_patient.values():  # one key per patient, shared by all its images
        assert len({keys[name] for name in names}) == 1
    assert len(set(keys.values())) == len(by_patient)
    for path in (tmp_path / "split.json", tmp_path / "data.json"):
        text = path.read_text()
        for name in owner:
            header = pydicom.dcmread(folder / name, stop_before_pixels=True)
            for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID"):
                value = str(header.get(keyword, "") or "")
                assert value and value not in text, f"{keyword} leaked into {path.name}"
    assert all("PAT-" not in str(r.group) + str(r.meta) for r in scan(format_registry, "dicom", folder))


def test_records_without_the_attribute_fall_back_to_their_series(format_registry, patients, tmp_path):
    source, by_patient = patients
    folder = tmp_path / "dicom"
    shutil.copytree(source, folder)
    lonely = by_patient["PAT-0000"][0]
    header = pydicom.dcmread(folder / lonely)
    del header.PatientID
    header.save_as(folder / lonely)
    series = series_of(folder, [lonely] + by_patient["PAT-0000"][1:])
    dataset = load_dataset(DataConfig(source=str(folder), resolution=16), format_registry)
    assert dataset.grouping.fallback == [lonely]
    same_series = [i for i, uid in series.items() if uid == series[lonely] and i != lonely]
    assert len(same_series) == 1 and same_series[0] not in dataset.grouping.fallback
    assert dataset.grouping.keys[lonely] != dataset.grouping.keys[same_series[0]]  # the other one is grouped by patient
    save_split(dataset, tmp_path / "split.json")
    assert json.loads((tmp_path / "split.json").read_text())["grouping"]["fallback_to_format_group"] == 1


def test_resume_detects_a_changed_group_and_a_changed_group_by(format_registry, patients, tmp_path):
    source, by_patient = patients
    folder = tmp_path / "dicom"
    shutil.copytree(source, folder)
    config = DataConfig(source=str(folder), resolution=16)
    dataset = load_dataset(config, format_registry)
    save_split(dataset, tmp_path / "split.json")
    saved = load_split(tmp_path / "split.json")
    check_split(load_dataset(config, format_registry), saved)
    by_study = {**saved, "grouping": {**saved["grouping"], "group_by": "StudyInstanceUID"}}  # as a run split by study saved it
    with pytest.raises(DataError, match=r"^data\.split\.group_by is PatientID now, but this run was split by StudyInstanceUID; set it back"):
        check_split(load_dataset(config, format_registry), by_study)
    by_accession = {**saved, "grouping": {**saved["grouping"], "group_by": "AccessionNumber"}}  # sorts before PatientID
    with pytest.raises(DataError, match=r"^data\.split\.group_by is PatientID now, but this run was split by AccessionNumber; set it back"):
        check_split(load_dataset(config, format_registry), by_accession)
    keys = saved["grouping"]["keys"]
    a = next(iter(keys))
    b = next(i for i in keys if keys[i] != keys[a])
    swapped = {**saved, "grouping": {**saved["grouping"], "keys": {**keys, a: keys[b], b: keys[a]}}}  # two images trade patients
    with pytest.raises(DataError, match=r"^data\.source changed since this run started: 2 images are in another group by PatientID now"):
        check_split(load_dataset(config, format_registry), swapped)
    owner = patient_of(by_patient)
    training_patients = sorted({owner[i] for i in dataset.split["train"]})
    moved = by_patient[training_patients[0]][0]  # one image of a training patient now names another training patient
    header = pydicom.dcmread(folder / moved)
    header.PatientID = training_patients[1]
    header.save_as(folder / moved)
    changed = load_dataset(config, format_registry)
    assert changed.split == dataset.split  # the same sides: only the grouping tells
    with pytest.raises(DataError, match=rf"^data\.source changed since this run started: 1 images are in another group by PatientID now \(e\.g\. '{moved}'\)"):
        check_split(changed, saved)


def test_a_saved_split_from_before_group_by_names_the_change(format_registry, patients, tmp_path):
    folder, _ = patients
    by_series = load_dataset(DataConfig(source=str(folder), resolution=16, split=SplitConfig(group_by="format", seed=1)), format_registry)
    old = {"train": by_series.split["train"], "held_out": by_series.split["held_out"]}  # what split.json held before
    now = load_dataset(DataConfig(source=str(folder), resolution=16, split=SplitConfig(seed=1)), format_registry)
    assert now.split != by_series.split
    with pytest.raises(DataError, match=r"predates data\.split\.group_by and was split by the format's groups; it is split by PatientID now"):
        check_split(now, old)


def test_unknown_dicom_keyword_is_one_line_with_a_suggestion(format_registry, patients):
    folder, _ = patients
    config = DataConfig(source=str(folder), resolution=16, split=SplitConfig(group_by="PatientId"))
    with pytest.raises(DataError, match=r"^data\.split\.group_by: 'PatientId' is not a DICOM attribute keyword .* Did you mean 'PatientID'\?$"):
        load_dataset(config, format_registry)


@pytest.fixture(scope="module")
def patient_slices(tmp_path_factory) -> Path:
    """An image folder of two classes, 5 patients each, 3 slices per patient: ``<class>/p<k>_<slice>.png``."""
    root = tmp_path_factory.mktemp("slices")
    cell = skimage.data.cell()
    for c, name in enumerate(("healthy", "tumor")):
        (root / name).mkdir()
        for k in range(5):
            for z in range(3):
                y, x = 40 * k, 40 * z + 120 * c
                Image.fromarray(cell[y : y + 32, x : x + 32]).save(root / name / f"p{c}{k}_{z}.png")
    return root


def test_regex_groups_keep_each_patient_on_one_side(format_registry, patient_slices):
    patient = {i: i.split("/")[1].split("_")[0] for i in ids(scan(format_registry, "image_folder", patient_slices))}
    by_file_crossed = 0
    for seed in range(6):
        config = DataConfig(source=str(patient_slices), resolution=16, split=SplitConfig(seed=seed, group_by=r"regex:^\w+/(p\d+)_\d"))
        dataset = load_dataset(config, format_registry)
        assert not crossing(sides(dataset), patient)
        assert sorted({patient[i][:2] for i in dataset.split["held_out"]}) == ["p0", "p1"]  # one patient per class
        assert len(dataset.split["held_out"]) == 6
        by_file = load_dataset(DataConfig(source=str(patient_slices), resolution=16, split=SplitConfig(seed=seed)), format_registry)
        assert by_file.grouping.group_by == "format"
        by_file_crossed += bool(crossing(sides(by_file), patient))
    assert by_file_crossed > 0


def test_column_groups_from_the_labels_csv(format_registry, patient_slices, tmp_path):
    record_ids = ids(scan(format_registry, "image_folder", patient_slices))
    mrn = {i: f"MRN-{int(i.split('/')[1][2]) * 7919 % 1000:03d}" for i in record_ids}  # patients shared across class folders
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label,patient\n" + "".join(f"{i},{i.split('/')[0]},{mrn[i]}\n" for i in record_ids))
    for seed in range(4):
        split = SplitConfig(seed=seed, group_by="column:patient")
        dataset = load_dataset(DataConfig(source=str(patient_slices), resolution=16, labels=str(labels), split=split), format_registry)
        assert not crossing(sides(dataset), mrn)
        assert len({mrn[i] for i in dataset.split["held_out"]}) >= 1
    save_split(dataset, tmp_path / "split.json")
    text = (tmp_path / "split.json").read_text()
    assert not any(value in text for value in mrn.values())
    assert json.loads(text)["grouping"]["groups"] == {"train": len(set(mrn.values())) - len({mrn[i] for i in dataset.split["held_out"]}),
                                                      "held_out": len({mrn[i] for i in dataset.split["held_out"]})}


def test_column_group_errors_name_the_csv_the_column_and_the_file(format_registry, patient_slices, tmp_path):
    record_ids = ids(scan(format_registry, "image_folder", patient_slices))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label,patient\n" + "".join(f"{i},{i.split('/')[0]},{'' if n == 4 else n // 3}\n" for n, i in enumerate(record_ids)))
    def load(group_by, labels_setting=str(labels)):
        return load_dataset(DataConfig(source=str(patient_slices), resolution=16, labels=labels_setting, split=SplitConfig(group_by=group_by)), format_registry)
    with pytest.raises(DataError, match=rf"^{labels}: line 6 has an empty 'patient' for '{record_ids[4]}'$"):
        load("column:patient")
    with pytest.raises(DataError, match=rf"^{labels}: no column 'subject' \(columns: file, label, patient\); name one of them in data\.split\.group_by: column:NAME$"):
        load("column:subject")
    with pytest.raises(DataError, match=r"^data\.split\.group_by: column:patient reads a column of the labels CSV, but data\.labels is 'auto'; set data\.labels"):
        load("column:patient", "auto")
    labels.write_text("file,label,patient\n" + "".join(f"{i},{i.split('/')[0]},{n}\n" for n, i in enumerate(record_ids[1:])))
    with pytest.raises(DataError, match=rf"^{labels}: has no row for '{record_ids[0]}'"):
        load("column:patient")


def test_regex_errors_name_the_field_and_an_example_id(format_registry, patient_slices):
    config = DataConfig(source=str(patient_slices), resolution=16, split=SplitConfig(group_by=r"regex:^(patient\d+)/"))
    with pytest.raises(DataError, match=r"^data\.split\.group_by: regex:\^\(patient\\d\+\)/ does not match the record id 'healthy/p00_0\.png'; "):
        load_dataset(config, format_registry)
    optional = DataConfig(source=str(patient_slices), resolution=16, split=SplitConfig(group_by=r"regex:(x)?p"))
    with pytest.raises(DataError, match=r"regex:\(x\)\?p captures nothing from the record id 'healthy/p00_0\.png'"):
        load_dataset(optional, format_registry)
    base = {"run_dir": "r", "generator": {"name": "x"}, "budget": {"kimg": 1}}
    for pattern, count in ((r"^(\w+)/(p\d+)_", 2), (r"^\w+/p", 0)):
        with pytest.raises(ConfigError, match=rf"^config: data\.split\.group_by: regex:.* has {count} capture groups; it needs exactly one.*e\.g\. regex:"):
            load_config({**base, "data": {"split": {"group_by": f"regex:{pattern}"}}})


def test_an_attribute_needs_a_format_with_headers(format_registry, patient_slices):
    config = DataConfig(source=str(patient_slices), resolution=16, split=SplitConfig(group_by="PatientID"))
    with pytest.raises(DataError, match=r"^data\.split\.group_by: 'PatientID' is a header attribute, and format 'image_folder' has no headers; use column:NAME"):
        load_dataset(config, format_registry)


def test_a_group_the_source_puts_on_both_sides_is_an_error(format_registry, tmp_path):
    images = skimage.data.cell()[:280:10, :280:10][None].repeat(6, axis=0)
    np.savez(tmp_path / "m.npz", train_images=images[:3], train_labels=np.zeros((3, 1), int), test_images=images[3:], test_labels=np.zeros((3, 1), int))
    records = scan(format_registry, "npz", tmp_path / "m.npz")
    config = DataConfig(source=str(tmp_path / "m.npz"), split=SplitConfig(group_by=r"regex:#(\d+)"))
    grouping = group_records(records, config, format_registry.data_format("npz")(format_registry.data_format("npz").Params()), "npz")
    with pytest.raises(DataError, match=r"^data\.split\.group_by: regex:#\(\\d\+\) puts 'test#0' and 'train#0' in one group, but the source fixes them to held_out and train"):
        split_records(records, config.split, grouping)


@pytest.mark.parametrize("first, second", [("train", "held_out"), ("held_out", "train")])
def test_a_group_fixed_to_both_sides_is_refused_whichever_comes_first(first, second):
    from raresynth import Record

    records = [Record(id="p1/a", source=Path("a"), group="p1", split=first), Record(id="p1/b", source=Path("b"), group="p1", split=second)]
    with pytest.raises(DataError, match=rf"puts 'p1/a' and 'p1/b' in one group, but the source fixes them to {first} and {second}"):
        split_records(records, SplitConfig())


def test_a_format_setting_an_unknown_split_is_refused():
    from raresynth import Record

    records = [Record(id="a.png", source=Path("a.png"), split="test")]
    with pytest.raises(DataError, match=r"^a\.png: the format set split 'test'; expected 'train' or 'held_out'$"):
        split_records(records, SplitConfig())


def test_a_group_is_stratified_by_its_most_common_label():
    from raresynth import Record
    from raresynth.data.split import _majority_label

    def members(*labels):
        return [Record(id=f"r{i}", source=Path("x"), label=label) for i, label in enumerate(labels)]

    assert _majority_label(members("a", "a", "b")) == "a"
    assert _majority_label(members("b", "a", "b")) == "b"
    assert _majority_label(members("b", "a")) == "a"  # a tie: the first label by name, whatever the order
    assert _majority_label(members(None, None)) == ""


@pytest.mark.parametrize("groups, fraction, held", [(2, 0.5, 1), (2, 0.9, 1), (2, 0.99, 1), (3, 0.9, 2), (5, 0.5, 2), (5, 0.05, 1)])
def test_a_large_held_out_fraction_still_leaves_a_group_to_train_on(groups, fraction, held):
    """round(fraction x groups) held out, at least one, never all."""
    from raresynth import Record

    records = [Record(id=f"p{g}/{i}", source=Path("x"), group=f"p{g}", label="c") for g in range(groups) for i in range(3)]
    train, held_out = split_records(records, SplitConfig(held_out_fraction=fraction))
    assert len({r.group for r in held_out}) == held and len({r.group for r in train}) == groups - held


def test_a_run_on_dicom_writes_no_patient_identifier_and_reports_images_without_one(tmp_path, capsys, one_thread):
    import toy_plugin
    from raresynth.training import train

    format_registry = load_plugins(only=["formats"], extra=[("toy", toy_plugin)])
    folder = tmp_path / "dicom"
    by_patient = write_patient_series(folder)
    lonely = by_patient["PAT-0003"][1]
    header = pydicom.dcmread(folder / lonely)
    del header.PatientID
    header.save_as(folder / lonely)
    config = load_config({
        "run_dir": str(tmp_path / "run"),
        "data": {"source": str(folder), "resolution": 16},
        "generator": {"name": "toy"},
        "budget": {"kimg": 0.016},
        "batch_size": 8,
        "schedule": {"tick_kimg": 0.008, "snapshot_kimg": 0.016, "grid_size": 4},
    }, registry=format_registry)
    train(config, registry=format_registry, progress_bar=False)
    assert f"raresynth: 1 image(s) have no PatientID (e.g. '{lonely}'); each is grouped by its format's group" in capsys.readouterr().err
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["grouping"]["group_by"] == "PatientID" and split["grouping"]["fallback_to_format_group"] == 1
    assert split["grouping"]["groups"]["held_out"] >= 1
    written = [path for path in (tmp_path / "run").rglob("*") if path.is_file()]
    assert {"split.json", "data.json", "config.yaml"} <= {path.name for path in written}
    for path in written:  # every file the run wrote, checkpoints included
        content = path.read_bytes()
        assert not any(patient.encode() in content for patient in by_patient), f"a PatientID leaked into {path.name}"


def test_a_damaged_or_missing_split_json_is_a_one_line_error(tmp_path):
    path = tmp_path / "split.json"
    with pytest.raises(DataError, match=rf"^{path}: saved split not found$"):
        load_split(path)
    for content, problem in (("{not json", "Expecting property name"), ('{"train": ["a.png"]}', "'held_out'"),
                             ('{"train": ["a.png"], "held_out": [], "grouping": {"keys": {}}}', "'group_by'"),
                             ('{"train": 3, "held_out": []}', "not iterable")):
        path.write_text(content)
        with pytest.raises(DataError, match=rf"^{path}: not a valid saved split \(.*{problem}.*\); it is written by raresynth, do not edit it$"):
            load_split(path)
