"""Bad input gives one-line DataErrors naming the file and the reason; ``on_bad_file: skip`` skips it.

Every bad file is made from a real one: a PNG cut in half, a text file renamed
``.png``, pydicom's truncated and compressed test files, a NIfTI volume cut short.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data

from helpers import save_png
from medical_files import ANATOMICAL, EXAMPLE_4D, PYDICOM_FILES
from raresynth import DataError, RawImage, Record
from raresynth.config import DataConfig, IntensityConfig
from raresynth.data import apply_labels, load_dataset, preprocess


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return skimage.data.immunohistochemistry()[::8, ::8]  # 64x64 RGB


def good_folder(root: Path, ihc: np.ndarray, count: int = 4) -> Path:
    for i in range(count):
        save_png(root / f"good{i}.png", np.roll(ihc, 5 * i, axis=1))
    return root


def load_error(format_registry, source, **config) -> str:
    """The message of the DataError that loading ``source`` raises; checks it is one line."""
    config.setdefault("resolution", 16)
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(source=str(source), **config), format_registry)
    message = str(caught.value)
    assert "\n" not in message
    return message


def truncated_copy(source: Path, target: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


# ---------------------------------------------------------------------------
# Damaged files
# ---------------------------------------------------------------------------


def test_truncated_png_and_jpeg(tmp_path, format_registry, ihc):
    for suffix in ("png", "jpg"):
        whole = save_png(tmp_path / "whole" / f"scan.{suffix}", ihc)
        bad = tmp_path / suffix
        bad.mkdir()
        truncated_copy(whole, bad / f"cut.{suffix}")
        message = load_error(format_registry, bad)
        assert message.startswith(str(bad / f"cut.{suffix}")) and "truncated or corrupt" in message


def test_zero_byte_file(tmp_path, format_registry):
    (tmp_path / "empty.png").write_bytes(b"")
    message = load_error(format_registry, tmp_path)
    assert message.startswith(str(tmp_path / "empty.png")) and "0-byte file" in message


def test_text_file_with_an_image_extension(tmp_path, format_registry):
    for name in ("notes.png", "notes.tif"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("patient list, not an image\n" * 20)
        message = load_error(format_registry, folder)
        assert message.startswith(str(folder / name)) and "not a PNG/JPEG/TIFF image" in message


def test_truncated_dicom(tmp_path, format_registry):
    path = PYDICOM_FILES / "MR_truncated.dcm"
    message = load_error(format_registry, path)
    assert message.startswith(str(path)) and "truncated or corrupt pixel data" in message


def test_compressed_dicom_without_a_decoder(format_registry, monkeypatch):
    from raresynth.plugins.formats import dicom

    class Unavailable:  # as pydicom reports a transfer syntax whose decoder package is not installed
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: Unavailable())
    path = PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"
    message = load_error(format_registry, path)
    assert message.startswith(f"{path}: compressed DICOM (JPEG-LS Lossless")
    assert "no decoder installed; pip install pylibjpeg pylibjpeg-libjpeg" in message


def test_dicom_without_pixels(format_registry):
    path = PYDICOM_FILES / "rtstruct.dcm"  # no preamble, no pixel data
    message = load_error(format_registry, path)
    assert message.startswith(f"{path}: has no image (Modality RTSTRUCT)")


def test_non_dicom_file_in_a_dicom_folder(tmp_path, format_registry):
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", tmp_path / "MR_small.dcm")
    (tmp_path / "README").write_text("exported by the PACS\n" * 10)
    message = load_error(format_registry, tmp_path)
    assert message.startswith(str(tmp_path / "README")) and "not a DICOM file" in message


def test_truncated_nifti_and_missing_time_point(tmp_path, format_registry):
    truncated_copy(EXAMPLE_4D, tmp_path / "cut.nii.gz", keep=0.3)
    message = load_error(format_registry, tmp_path / "cut.nii.gz")
    assert message.startswith(str(tmp_path / "cut.nii.gz")) and "truncated or corrupt" in message
    message = load_error(format_registry, EXAMPLE_4D, format_options={"volume": 5})
    assert message.startswith(str(EXAMPLE_4D)) and "has 2 volumes" in message


def test_npz_with_objects_or_not_an_archive(tmp_path, format_registry):
    np.savez(tmp_path / "objects.npz", images=np.array([np.zeros((28, 28)), "x"], dtype=object))
    message = load_error(format_registry, tmp_path / "objects.npz")
    assert message.startswith(str(tmp_path / "objects.npz")) and "Python objects" in message
    (tmp_path / "text.npz").write_text("not a zip archive\n")
    message = load_error(format_registry, tmp_path / "text.npz")
    assert message.startswith(str(tmp_path / "text.npz")) and "not a valid .npz archive" in message


# ---------------------------------------------------------------------------
# Sources and settings that do not fit
# ---------------------------------------------------------------------------


def test_image_smaller_than_the_resolution(tmp_path, format_registry):
    save_png(tmp_path / "micro.png", skimage.data.microaneurysms())  # 102x102
    message = load_error(format_registry, tmp_path, resolution=128)
    assert message == (
        f"{tmp_path / 'micro.png'}: image is 102x102, smaller than data.resolution 128; "
        "set data.upscale: true to upscale it or lower data.resolution"
    )
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=128, upscale=True), format_registry)
    assert dataset.train.images.shape == (1, 1, 128, 128)


def test_empty_folder_and_missing_source(tmp_path, format_registry):
    (tmp_path / "empty").mkdir()
    message = load_error(format_registry, tmp_path / "empty")
    assert message.startswith(f"{tmp_path / 'empty'}: no images found (formats looked for: dicom")
    assert "image_folder" in message and "nifti" in message and "npz" in message
    message = load_error(format_registry, tmp_path / "empty", format="image_folder")
    assert message.startswith(f"{tmp_path / 'empty'}: no images found (format image_folder")
    message = load_error(format_registry, tmp_path / "missing")
    assert message.startswith(f"{tmp_path / 'missing'}: data.source not found")


def test_images_in_the_root_next_to_class_subfolders(tmp_path, format_registry, ihc):
    save_png(tmp_path / "loose.png", ihc)
    save_png(tmp_path / "benign" / "a.png", ihc)
    message = load_error(format_registry, tmp_path)
    assert message.startswith(f"{tmp_path}: 1 image(s) directly in the folder (e.g. loose.png)")
    assert "benign" in message and "move every image into a class subfolder" in message


def test_two_formats_recognize_one_folder(tmp_path, format_registry, ihc):
    save_png(tmp_path / "a.png", ihc)
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", tmp_path / "b.dcm")
    message = load_error(format_registry, tmp_path)
    assert message.startswith(f"{tmp_path}: several formats can read it (dicom, image_folder)")


def test_window_mode_without_a_window(tmp_path, format_registry, ihc):
    save_png(tmp_path / "a.png", ihc)
    message = load_error(format_registry, tmp_path, intensity=IntensityConfig(mode="window"))
    assert message.startswith(f"{tmp_path / 'a.png'}: data.intensity.mode is 'window' but the file has no window")


def test_unsupported_channel_count(ihc):
    five = np.concatenate([ihc, ihc[..., :2]], axis=2)
    with pytest.raises(DataError, match=r"^scan\.png: image has 5 channels"):
        preprocess(RawImage(five), DataConfig(resolution=16), Record(id="scan.png", source=Path("scan.png")))


# ---------------------------------------------------------------------------
# Labels that do not match
# ---------------------------------------------------------------------------


def test_labels_csv_missing_an_image(tmp_path, format_registry, ihc):
    source = good_folder(tmp_path / "images", ihc, count=3)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\ngood0.png,benign\ngood1.png,malignant\n")
    message = load_error(format_registry, source, labels=str(labels))
    assert message.startswith(f"{labels}: has no row for 'good2.png'")
    dataset = load_dataset(DataConfig(source=str(source), resolution=16, labels=str(labels), on_bad_file="skip"), format_registry)
    assert [record_id for record_id, _ in dataset.skipped] == ["good2.png"]
    assert dataset.spec.class_names == ("benign", "malignant")


def test_labels_csv_naming_a_missing_image(tmp_path, format_registry, ihc):
    source = good_folder(tmp_path / "images", ihc, count=2)
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\ngood0.png,a\ngood1.png,b\ngone.png,a\n")
    message = load_error(format_registry, source, labels=str(labels))
    assert message.startswith(f"{labels}: names 'gone.png', which is not an image in data.source")


def test_labels_csv_with_other_column_names(tmp_path, format_registry, ihc):
    source = good_folder(tmp_path / "images", ihc, count=2)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,diagnosis\ngood0.png,a\ngood1.png,b\n")
    message = load_error(format_registry, source, labels=str(labels))
    assert message.startswith(f"{labels}: no column 'file' (columns: image, diagnosis); set data.labels_file_column")
    dataset = load_dataset(
        DataConfig(source=str(source), resolution=16, labels=str(labels), labels_file_column="image", labels_column="diagnosis"),
        format_registry,
    )
    assert dataset.spec.class_names == ("a", "b")


def test_only_some_images_labelled_by_the_format(tmp_path):
    records = [Record(id="a.png", source=tmp_path / "a.png", label="x"), Record(id="b.png", source=tmp_path / "b.png")]
    with pytest.raises(DataError, match=r"b\.png: has no label while 1 other images do"):
        apply_labels(records, DataConfig())
    kept, skipped = apply_labels(records, DataConfig(labels="none"))
    assert [r.label for r in kept] == [None, None] and skipped == []


# ---------------------------------------------------------------------------
# on_bad_file: skip, and the source stays untouched
# ---------------------------------------------------------------------------


def test_skip_leaves_bad_files_out_and_counts_them(tmp_path, format_registry, ihc):
    source = good_folder(tmp_path, ihc, count=4)
    truncated_copy(source / "good0.png", source / "cut.png")
    (source / "empty.png").write_bytes(b"")
    (source / "text.jpg").write_text("not an image\n")
    save_png(source / "tiny.png", ihc[:8, :8])
    dataset = load_dataset(DataConfig(source=str(source), resolution=16, on_bad_file="skip"), format_registry)
    assert len(dataset.train) + len(dataset.held_out) == 4
    reasons = dict(dataset.skipped)
    assert sorted(reasons) == ["cut.png", "empty.png", "text.jpg", "tiny.png"]
    assert "truncated or corrupt" in reasons["cut.png"] and "0-byte" in reasons["empty.png"]
    assert "not a PNG/JPEG/TIFF image" in reasons["text.jpg"] and "smaller than data.resolution" in reasons["tiny.png"]


def test_skip_in_a_dicom_folder(tmp_path, format_registry):
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_truncated.dcm", "JPEG-lossy.dcm", "rtstruct.dcm"):  # JPEG-lossy: no decoder decodes it
        shutil.copy(PYDICOM_FILES / name, tmp_path / name)
    dataset = load_dataset(DataConfig(source=str(tmp_path), resolution=16, on_bad_file="skip"), format_registry)
    assert sorted(record_id for record_id, _ in dataset.skipped) == ["JPEG-lossy.dcm", "MR_truncated.dcm", "rtstruct.dcm"]
    assert sorted(dataset.split["train"] + dataset.split["held_out"]) == ["CT_small.dcm", "MR_small.dcm"]


def test_all_bad_files_skipped_is_still_an_error(tmp_path, format_registry):
    (tmp_path / "a.png").write_bytes(b"")
    message = load_error(format_registry, tmp_path, on_bad_file="skip")
    assert message.startswith(f"{tmp_path}: none of the 1 images could be used; first problem: {tmp_path / 'a.png'}: 0-byte file")


def test_loading_never_changes_the_source(tmp_path, format_registry, ihc):
    good_folder(tmp_path / "pngs" / "a", ihc, count=2)
    good_folder(tmp_path / "pngs" / "b", ihc, count=2)
    shutil.copytree(PYDICOM_FILES / "dicomdirtests" / "98892003" / "MR700", tmp_path / "dicom")
    shutil.copy(ANATOMICAL, tmp_path / "anatomical.nii")
    with gzip.open(tmp_path / "anatomical.nii.gz", "wb") as file:
        file.write(ANATOMICAL.read_bytes())
    np.savez(tmp_path / "m.npz", images=np.stack([ihc[..., 0]] * 3))

    def fingerprint() -> dict[str, tuple[str, int]]:
        return {
            str(path.relative_to(tmp_path)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(tmp_path.rglob("*"))
            if path.is_file()
        }

    before = fingerprint()
    for source in ("pngs", "dicom", "anatomical.nii", "anatomical.nii.gz", "m.npz"):
        load_dataset(DataConfig(source=str(tmp_path / source), resolution=16), format_registry)
    assert fingerprint() == before


def test_a_format_listing_an_image_twice_is_refused(tmp_path, format_registry, ihc, monkeypatch):
    """Record ids key the split and split.json: a (third-party) format that lists one twice gets a one-line error."""
    from raresynth.plugins.formats.image_folder import ImageFolder

    source = good_folder(tmp_path, ihc, count=3)
    scan = ImageFolder.scan
    monkeypatch.setattr(ImageFolder, "scan", lambda self, root: (lambda records: records + records[:1])(scan(self, root)))
    message = load_error(format_registry, source, format="image_folder")
    assert message == f"{source}: format 'image_folder' lists image 'good0.png' 2 times; record ids must be unique"


def test_a_format_that_crashes_reading_an_image_names_the_file(tmp_path, format_registry, ihc, monkeypatch):
    """A plugin's bug (any exception, not a DataError) still gives a one-line error naming the file and the format."""
    from raresynth.plugins.formats.image_folder import ImageFolder

    source = good_folder(tmp_path, ihc, count=2)

    def broken(self, record):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ImageFolder, "read", broken)
    message = load_error(format_registry, source, format="image_folder")
    assert message.endswith("good0.png: format 'image_folder' could not read it: ZeroDivisionError: division by zero")
