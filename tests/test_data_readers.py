"""The built-in formats read real files, and preprocessing maps them to [-1, 1] exactly.

Images are real: pydicom's and nibabel's test files, and scikit-image's sample
images written to ``tmp_path`` as PNG, JPEG, TIFF and MedMNIST-style NPZ.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
import skimage.data
import tifffile

from helpers import save_png
from medical_files import ANATOMICAL, EXAMPLE_4D, PYDICOM_FILES
from raresynth import DataError, RawImage, Record
from raresynth.config import DataConfig, IntensityConfig
from raresynth.data import inspect_source, load_dataset, preprocess, resolve_format


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    """Small crops of scikit-image's sample images (uint8)."""
    return {
        "retina": skimage.data.retina()[300:1324:16, 300:1324:16],  # 64x64 RGB fundus photo
        "ihc": skimage.data.immunohistochemistry()[::8, ::8],  # 64x64 RGB histology
        "cell": skimage.data.cell()[::8, ::8],  # 83x69 gray microscopy
        "micro": skimage.data.microaneurysms(),  # 102x102 gray retina detail
    }


def make_format(format_registry, name, **options):
    cls = format_registry.data_format(name)
    return cls(cls.Params(**options))


def unit(record_id: str = "x") -> Record:
    return Record(id=record_id, source=Path(record_id))


# ---------------------------------------------------------------------------
# image_folder
# ---------------------------------------------------------------------------


def test_image_folder_reads_png_jpeg_bmp_with_labels_from_subfolders(tmp_path, format_registry, samples):
    save_png(tmp_path / "benign" / "retina.png", samples["retina"])
    save_png(tmp_path / "benign" / "ihc.jpg", samples["ihc"])
    save_png(tmp_path / "malignant" / "cell.png", samples["cell"])
    save_png(tmp_path / "malignant" / "nested" / "micro.bmp", samples["micro"])
    (tmp_path / "malignant" / ".hidden.png").write_text("ignored: hidden")
    (tmp_path / "benign" / "notes.txt").write_text("ignored: not an image extension")

    records = make_format(format_registry, "image_folder").scan(tmp_path)
    assert {r.id: r.label for r in records} == {
        "benign/ihc.jpg": "benign",
        "benign/retina.png": "benign",
        "malignant/cell.png": "malignant",
        "malignant/nested/micro.bmp": "malignant",
    }
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=16, channels=3), format_registry)
    assert dataset.format == "image_folder"
    assert dataset.spec.class_names == ("benign", "malignant")
    assert len(dataset.train) + len(dataset.held_out) == 4
    assert dataset.train.images.shape[1:] == (3, 16, 16)
    assert dataset.train.images.dtype.is_floating_point
    assert -1 <= dataset.train.images.min() and dataset.train.images.max() <= 1


def test_image_folder_accepts_a_single_file(tmp_path, format_registry, samples):
    path = save_png(tmp_path / "retina.png", samples["retina"])
    records = make_format(format_registry, "image_folder").scan(path)
    assert [(r.id, r.label) for r in records] == [("retina.png", None)]
    raw = make_format(format_registry, "image_folder").read(records[0])
    np.testing.assert_array_equal(raw.pixels, samples["retina"])


def test_16_bit_tiff_keeps_more_than_256_levels(tmp_path, format_registry, samples):
    gray16 = (skimage.color.rgb2gray(samples["retina"]) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "gray16.tif", gray16)
    fmt = make_format(format_registry, "image_folder")
    raw = fmt.read(fmt.scan(tmp_path / "gray16.tif")[0])
    assert raw.pixels.dtype == np.uint16
    np.testing.assert_array_equal(raw.pixels, gray16)
    config = DataConfig(resolution=64, intensity=IntensityConfig(mode="dtype"))  # 64x64: no resize
    out = preprocess(raw, config, unit("gray16.tif"))
    assert len(np.unique(out)) > 256
    np.testing.assert_allclose(out[0], gray16 / 65535 * 2 - 1, atol=1e-6)


def test_16_bit_rgb_tiff_is_read_through_tifffile(tmp_path, format_registry, samples):
    rgb16 = samples["retina"].astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "rgb16.tiff", rgb16, photometric="rgb")
    fmt = make_format(format_registry, "image_folder")
    raw = fmt.read(fmt.scan(tmp_path / "rgb16.tiff")[0])
    assert raw.pixels.dtype == np.uint16 and raw.pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(raw.pixels, rgb16)


def test_multi_page_tiff_gives_one_record_per_page(tmp_path, format_registry, samples):
    pages = np.stack([samples["ihc"][:, :, c].astype(np.uint16) * 257 for c in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    fmt = make_format(format_registry, "image_folder")
    records = fmt.scan(tmp_path)
    assert [r.id for r in records] == ["stack.tif#page=0", "stack.tif#page=1", "stack.tif#page=2"]
    assert {r.group for r in records} == {"stack.tif"}
    np.testing.assert_array_equal(fmt.read(records[1]).pixels, pages[1])


# ---------------------------------------------------------------------------
# dicom
# ---------------------------------------------------------------------------


def test_dicom_applies_the_modality_lut_and_keeps_the_header_window(format_registry):
    fmt = make_format(format_registry, "dicom")
    ct = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    raw = fmt.read(fmt.scan(PYDICOM_FILES / "CT_small.dcm")[0])
    expected = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    np.testing.assert_allclose(raw.pixels, expected)  # Hounsfield units
    assert raw.window is None
    mr = fmt.read(fmt.scan(PYDICOM_FILES / "MR_small.dcm")[0])
    assert mr.window == (600.0, 1600.0)


def test_dicom_series_folder_of_files_without_extension(format_registry):
    folder = PYDICOM_FILES / "dicomdirtests" / "98892003" / "MR700"
    records = make_format(format_registry, "dicom").scan(folder)
    assert [r.id for r in records] == sorted(os.listdir(folder))
    groups = {r.group for r in records}
    assert len(groups) == 1  # one series: one group
    group = groups.pop()
    header = pydicom.dcmread(folder / records[0].id, stop_before_pixels=True)
    assert len(group) == 16 and all(c in "0123456789abcdef" for c in group)
    assert group not in (header.StudyInstanceUID, header.SeriesInstanceUID)  # a hash, no identifier copied
    assert all(r.meta == {} and r.label is None for r in records)
    dataset = load_dataset(DataConfig(source=str(folder), resolution=16), format_registry)
    assert dataset.format == "dicom" and len(dataset.train) == 7


def test_dicom_exposes_an_attribute_to_the_core_but_records_never_hold_it(format_registry):
    study = PYDICOM_FILES / "dicomdirtests" / "98892003"  # real files: one patient, seven series
    fmt = make_format(format_registry, "dicom")
    records = fmt.scan(study)
    headers = {r.id: pydicom.dcmread(study / r.id, stop_before_pixels=True) for r in records}
    (patient_id,) = {str(h.PatientID) for h in headers.values()}
    assert len({r.group for r in records}) == len({str(h.SeriesInstanceUID) for h in headers.values()}) == 7
    assert all(fmt.attribute_value(r, "PatientID") == str(headers[r.id].PatientID) for r in records)
    assert fmt.attribute_value(records[0], "StudyInstanceUID") == str(headers[records[0].id].StudyInstanceUID)
    assert fmt.attribute_value(records[0], "OtherPatientIDs") is None  # absent: the core falls back to the series
    assert not any(patient_id in repr(r) for r in records)  # the value stays out of every record
    with pytest.raises(DataError, match=r"^data\.split\.group_by: 'SeriesUID' is not a DICOM attribute keyword"):
        fmt.attribute_value(records[0], "SeriesUID")
    frames = fmt.scan(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm")
    expected = str(pydicom.dcmread(PYDICOM_FILES / "SC_rgb_rle_2frame.dcm", stop_before_pixels=True).PatientID)
    assert [fmt.attribute_value(r, "PatientID") for r in frames] == [expected, expected]
    dataset = load_dataset(DataConfig(source=str(study), resolution=16), format_registry)
    assert dataset.grouping.group_by == "PatientID" and len(set(dataset.grouping.keys.values())) == 1
    assert dataset.split["held_out"] == []  # one patient: nothing to hold out without splitting them


def test_inspect_reports_groups_and_tries_a_grouping(format_registry, capsys):
    from raresynth.cli import main

    study = PYDICOM_FILES / "dicomdirtests" / "98892003"
    report = inspect_source(study, registry=format_registry)
    assert (report.group_by, report.num_groups, report.largest_group, report.group_fallback) == ("PatientID", 1, 17, 0)
    assert "groups:   1 by PatientID, the largest of 17 image(s)" in report.to_text()
    by_series = inspect_source(study, registry=format_registry, group_by="SeriesInstanceUID")
    assert (by_series.num_groups, by_series.largest_group) == (7, 7)  # MR700 is one series of 7 files
    assert main(["data", "inspect", str(study), "--group-by", r"regex:^(MR\d+)/", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["group_by"], shown["num_groups"], shown["largest_group"]) == (r"regex:^(MR\d+)/", 3, 7)
    assert main(["data", "inspect", str(study), "--group-by", "regex:MR"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --group-by: regex:MR has 0 capture groups; it needs exactly one")


def test_dicom_multi_frame_file_gives_one_record_per_frame(format_registry):
    path = PYDICOM_FILES / "SC_rgb_rle_2frame.dcm"  # RLE: decoded by pydicom itself
    fmt = make_format(format_registry, "dicom")
    records = fmt.scan(path)
    assert [r.id for r in records] == ["SC_rgb_rle_2frame.dcm#frame=0", "SC_rgb_rle_2frame.dcm#frame=1"]
    frames = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(fmt.read(records[1]).pixels, frames[1])


def test_monochrome1_is_inverted_with_its_window(tmp_path, format_registry):
    dataset = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "mono1.dcm")
    fmt = make_format(format_registry, "dicom")
    normal = fmt.read(fmt.scan(PYDICOM_FILES / "MR_small.dcm")[0])
    inverted = fmt.read(fmt.scan(tmp_path / "mono1.dcm")[0])
    total = int(normal.pixels.min()) + int(normal.pixels.max())
    np.testing.assert_array_equal(inverted.pixels, total - normal.pixels)
    assert inverted.window == (total - 600.0, 1600.0)
    config = DataConfig(resolution=64, intensity=IntensityConfig(mode="window"))
    np.testing.assert_allclose(preprocess(inverted, config, unit()), -preprocess(normal, config, unit()), atol=1e-6)


# ---------------------------------------------------------------------------
# nifti
# ---------------------------------------------------------------------------


def test_nifti_gives_one_record_per_non_empty_slice_grouped_by_volume(format_registry):
    volume = np.asarray(nibabel.as_closest_canonical(nibabel.load(ANATOMICAL)).dataobj, dtype=np.float32)
    non_empty = [z for z in range(volume.shape[2]) if np.ptp(volume[:, :, z]) > 0]
    records = make_format(format_registry, "nifti").scan(ANATOMICAL)
    assert [r.index for r in records] == non_empty
    assert records[0].id == f"anatomical.nii#z={non_empty[0]}"
    assert {r.group for r in records} == {"anatomical.nii"}
    assert len(make_format(format_registry, "nifti", skip_empty=False).scan(ANATOMICAL)) == volume.shape[2]
    sagittal = make_format(format_registry, "nifti", axis=0, skip_empty=False)
    records = sagittal.scan(ANATOMICAL)
    assert len(records) == volume.shape[0]
    raw = sagittal.read(records[5])
    assert raw.pixels.shape == (volume.shape[2], volume.shape[1]) and raw.window is None  # superior at the top
    np.testing.assert_array_equal(raw.pixels, np.rot90(volume[5]))


def test_nifti_reorients_every_volume_to_the_same_axes(tmp_path, format_registry):
    """A copy stored with the x axis flipped (and its affine saying so) reads the same."""
    original = nibabel.load(ANATOMICAL)
    data = np.asarray(original.dataobj)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = data.shape[0] - 1
    flipped = nibabel.Nifti1Image(data[::-1].copy(), original.affine @ flip)
    nibabel.save(flipped, tmp_path / "flipped.nii.gz")
    shutil.copy(ANATOMICAL, tmp_path / "original.nii")
    fmt = make_format(format_registry, "nifti")
    records = {r.id: r for r in fmt.scan(tmp_path)}
    np.testing.assert_array_equal(fmt.read(records["flipped.nii.gz#z=12"]).pixels, fmt.read(records["original.nii#z=12"]).pixels)


def test_nifti_4d_volume_option_picks_the_time_point(format_registry):
    first = make_format(format_registry, "nifti", volume=0)
    second = make_format(format_registry, "nifti", volume=1)
    record = first.scan(EXAMPLE_4D)[10]
    data = np.asarray(nibabel.as_closest_canonical(nibabel.load(EXAMPLE_4D)).dataobj[..., 1], dtype=np.float32)
    np.testing.assert_array_equal(second.read(record).pixels, np.rot90(data[:, :, record.index]))
    assert not np.array_equal(first.read(record).pixels, second.read(record).pixels)


# ---------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------


def write_medmnist(path: Path, image: np.ndarray, counts=(6, 2, 2)) -> dict[str, np.ndarray]:
    """A MedMNIST-style archive of 28x28 crops of ``image``, labels (N, 1) alternating 0/1."""
    crops = [image[y : y + 28, x : x + 28] for y in range(0, image.shape[0] - 28, 9) for x in range(0, image.shape[1] - 28, 9)]
    arrays, start = {}, 0
    for part, count in zip(("train", "val", "test"), counts):
        arrays[f"{part}_images"] = np.stack(crops[start : start + count]).astype(np.uint8)
        arrays[f"{part}_labels"] = (np.arange(count) % 2)[:, None].astype(np.uint8)
        start += count
    np.savez(path, **arrays)
    return arrays


def test_npz_medmnist_layout_with_file_split_and_labels(tmp_path, format_registry, samples):
    arrays = write_medmnist(tmp_path / "cellmnist.npz", samples["cell"])
    records = make_format(format_registry, "npz").scan(tmp_path / "cellmnist.npz")
    assert [r.id for r in records][:2] == ["train#0", "train#1"]
    assert [r.split for r in records] == ["train"] * 8 + ["held_out"] * 2
    assert [r.label for r in records[:3]] == ["0", "1", "0"]
    named = make_format(format_registry, "npz", class_names=["normal", "abnormal"])
    assert named.scan(tmp_path / "cellmnist.npz")[1].label == "abnormal"
    np.testing.assert_array_equal(named.read(records[9]).pixels, arrays["test_images"][1])
    dataset = load_dataset(DataConfig(source=str(tmp_path / "cellmnist.npz"), resolution=16), format_registry)
    assert dataset.format == "npz"
    assert dataset.split["held_out"] == ["test#0", "test#1"]
    assert dataset.spec.class_names == ("0", "1") and dataset.spec.num_train == 8
    assert dataset.held_out.labels.tolist() == [0, 1]


def test_npz_plain_rgb_images_without_file_split(tmp_path, format_registry, samples):
    images = np.stack([samples["ihc"][i : i + 32, i : i + 32] for i in range(0, 30, 3)])  # (10, 32, 32, 3)
    np.savez(tmp_path / "plain.npz", images=images, labels=np.arange(10) % 3)
    fmt = make_format(format_registry, "npz", use_file_split=False)
    records = fmt.scan(tmp_path / "plain.npz")
    assert [r.id for r in records][:2] == ["images#0", "images#1"]
    assert all(r.split is None for r in records) and records[5].label == "2"
    assert fmt.read(records[3]).pixels.shape == (32, 32, 3)


# ---------------------------------------------------------------------------
# format detection and inspect
# ---------------------------------------------------------------------------


def test_format_auto_detects_each_source(tmp_path, format_registry, samples):
    save_png(tmp_path / "pngs" / "a.png", samples["cell"])
    write_medmnist(tmp_path / "m.npz", samples["cell"])
    sources = {
        "image_folder": tmp_path / "pngs",
        "dicom": PYDICOM_FILES / "CT_small.dcm",
        "nifti": ANATOMICAL,
        "npz": tmp_path / "m.npz",
    }
    for name, source in sources.items():
        assert type(resolve_format(DataConfig(source=str(source)), format_registry)) is format_registry.data_format(name)


def test_inspect_reports_counts_sizes_and_problems(tmp_path, format_registry, samples):
    save_png(tmp_path / "a" / "one.png", samples["retina"])
    save_png(tmp_path / "a" / "two.png", samples["ihc"])
    save_png(tmp_path / "b" / "three.png", samples["cell"])
    (tmp_path / "b" / "broken.png").write_bytes(b"")
    report = inspect_source(tmp_path, registry=format_registry)
    assert report.format == "image_folder" and report.num_records == 4 and report.num_readable == 3
    assert report.label_counts == {"a": 2, "b": 2}
    assert report.sizes == {"64x64": 2, "83x69": 1}
    assert report.channels == {1: 1, 3: 2} and report.dtypes == {"uint8": 3}
    assert [record_id for record_id, _ in report.problems] == ["b/broken.png"]
    text = report.to_text()
    assert "image_folder" in text and "64x64 (2)" in text and "broken.png: 0-byte file" in text
    assert json.loads(json.dumps(report.to_dict()))["problems"][0]["record"] == "b/broken.png"


# ---------------------------------------------------------------------------
# preprocess, numerically
# ---------------------------------------------------------------------------


def test_window_mode_maps_the_window_edges_to_minus_one_and_one():
    center, width = 40.0, 400.0
    ramp = np.tile(np.linspace(center - width / 2, center + width / 2, 16, dtype=np.float32), (16, 1))
    config = DataConfig(resolution=16, intensity=IntensityConfig(mode="window", window=(center, width)))
    out = preprocess(RawImage(ramp), config, unit())
    assert out.shape == (1, 16, 16) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, :, -1], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 0], np.linspace(-1, 1, 16), atol=1e-5)


def test_window_mode_on_a_real_mr_uses_the_file_window_in_auto_mode(format_registry):
    fmt = make_format(format_registry, "dicom")
    raw = fmt.read(fmt.scan(PYDICOM_FILES / "MR_small.dcm")[0])  # 64x64, window (600, 1600)
    expected = np.clip((raw.pixels.astype(np.float64) - (600 - 800)) / 1600, 0, 1) * 2 - 1
    window = preprocess(raw, DataConfig(resolution=64, intensity=IntensityConfig(mode="window")), unit())
    auto = preprocess(raw, DataConfig(resolution=64), unit())
    np.testing.assert_allclose(window[0], expected, atol=1e-5)
    np.testing.assert_array_equal(auto, window)


def test_intensity_modes_on_real_images(format_registry, samples):
    retina = RawImage(samples["retina"])
    dtype = preprocess(retina, DataConfig(resolution=64, channels=3, intensity=IntensityConfig(mode="dtype")), unit())
    np.testing.assert_allclose(dtype, samples["retina"].transpose(2, 0, 1) / 255 * 2 - 1, atol=1e-6)
    minmax = preprocess(retina, DataConfig(resolution=64, channels=3, intensity=IntensityConfig(mode="minmax")), unit())
    assert minmax.min() == -1.0 and minmax.max() == 1.0
    fmt = make_format(format_registry, "dicom")
    ct = fmt.read(fmt.scan(PYDICOM_FILES / "CT_small.dcm")[0])  # no window in the header: auto uses percentiles
    percentile = preprocess(ct, DataConfig(resolution=128, intensity=IntensityConfig(mode="percentile", percentiles=(5, 95))), unit())
    low, high = np.percentile(ct.pixels, [5, 95])
    assert np.isclose((ct.pixels <= low).mean(), (percentile == -1).mean(), atol=0.01)
    assert np.isclose((ct.pixels >= high).mean(), (percentile == 1).mean(), atol=0.01)
    auto = preprocess(ct, DataConfig(resolution=128), unit())
    np.testing.assert_array_equal(auto, preprocess(ct, DataConfig(resolution=128, intensity=IntensityConfig(mode="percentile")), unit()))


def test_constant_images_do_not_divide_by_zero():
    flat = RawImage(np.full((32, 32), 700, dtype=np.int16))
    for mode in ("minmax", "percentile", "auto"):
        out = preprocess(flat, DataConfig(resolution=16, intensity=IntensityConfig(mode=mode)), unit())
        assert np.isfinite(out).all() and (out == -1).all()


def test_crop_keeps_the_center_and_pad_fills_with_minus_one(samples):
    tall = samples["cell"][:80, :64]  # 80x64
    config = DataConfig(resolution=64, intensity=IntensityConfig(mode="dtype"))
    cropped = preprocess(RawImage(tall), config, unit())
    np.testing.assert_allclose(cropped[0], tall[8:72] / 255 * 2 - 1, atol=1e-6)
    narrow = samples["cell"][:64, :48]  # 64x48: padded to 64x64, no resize
    padded = preprocess(RawImage(narrow), config.model_copy(update={"fit": "pad"}), unit())
    assert (padded[0, :, :8] == -1).all() and (padded[0, :, 56:] == -1).all()
    np.testing.assert_allclose(padded[0, :, 8:56], narrow / 255 * 2 - 1, atol=1e-6)


def test_channel_conversions(samples):
    rgb = samples["ihc"]
    config = DataConfig(resolution=64, intensity=IntensityConfig(mode="dtype"))
    gray = preprocess(RawImage(rgb), config, unit())
    luma = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]) / 255
    np.testing.assert_allclose(gray[0], luma * 2 - 1, atol=1e-5)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=2)
    np.testing.assert_array_equal(preprocess(RawImage(rgba), config, unit()), gray)
    repeated = preprocess(RawImage(samples["micro"][:64, :64]), config.model_copy(update={"channels": 3}), unit())
    assert repeated.shape == (3, 64, 64)
    np.testing.assert_array_equal(repeated[0], repeated[2])


def test_downscaling_gives_the_resolution_in_range(samples):
    out = preprocess(RawImage(samples["micro"]), DataConfig(resolution=16, channels=3), unit())
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0.05
