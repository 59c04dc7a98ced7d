"""Compressed DICOM decodes out of the box (issue 11, case 8), checked against pydicom's own uncompressed files.

pydicom ships each test image in several transfer syntaxes; a lossless one must give
exactly the pixels of the uncompressed (or another lossless) file, a lossy one nearly
those pixels. All of it goes through raresynth's ``dicom`` format (modality LUT included).
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medical_files import PYDICOM_FILES
from raresynth import DataError, Record
from raresynth.config import DataConfig
from raresynth.data import load_dataset


def pixels(format_registry, name: str) -> np.ndarray:
    cls = format_registry.data_format("dicom")
    path = PYDICOM_FILES / name
    return np.asarray(cls(cls.Params()).read(Record(id=name, source=path)).pixels)


def transfer_syntax(name: str) -> str:
    return pydicom.dcmread(PYDICOM_FILES / name, stop_before_pixels=True).file_meta.TransferSyntaxUID.name


@pytest.mark.parametrize(("name", "syntax"), [
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)"),
    ("MR_small_RLE.dcm", "RLE Lossless"),
])
def test_lossless_gray_equals_the_uncompressed_file(format_registry, name, syntax):
    assert transfer_syntax(name).startswith(syntax)
    reference = pixels(format_registry, "MR_small.dcm")  # Explicit VR Little Endian: no decoder involved
    decoded = pixels(format_registry, name)
    assert decoded.shape == reference.shape == (64, 64)
    np.testing.assert_array_equal(decoded, reference)


def test_lossless_rgb_decoders_agree_and_lossy_ones_are_close(format_registry):
    rle = pixels(format_registry, "SC_rgb_rle.dcm")  # pylibjpeg-rle
    jpeg_lossless = pixels(format_registry, "SC_rgb_jpeg_gdcm.dcm")  # JPEG Lossless Process 14, pylibjpeg-libjpeg
    assert transfer_syntax("SC_rgb_jpeg_gdcm.dcm").startswith("JPEG Lossless")
    assert rle.shape == (100, 100, 3)
    np.testing.assert_array_equal(jpeg_lossless, rle)
    for lossy in ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jls_lossy_line.dcm"):  # JPEG Baseline; JPEG-LS near-lossless
        error = np.abs(pixels(format_registry, lossy).astype(np.int64) - rle)
        assert error.mean() < 2 and error.max() <= 8, lossy


def test_12_bit_jpeg_extended(format_registry):
    name = "JPGExtended.dcm"  # failed as "truncated or corrupt pixel data" with Pillow alone
    assert transfer_syntax(name).startswith("JPEG Extended")
    header = pydicom.dcmread(PYDICOM_FILES / name, stop_before_pixels=True)
    decoded = pixels(format_registry, name)
    assert header.BitsStored == 12 and decoded.shape == (header.Rows, header.Columns)
    assert decoded.max() > 255 and decoded.max() < 4096  # really 12-bit values, not 8-bit ones
    same_scan = pixels(format_registry, "JPEG2000.dcm")  # the same image, JPEG 2000 coded: an independent decoder
    assert np.corrcoef(decoded.ravel(), same_scan.ravel())[0, 1] > 0.9


def test_a_file_no_installed_decoder_decodes_names_its_transfer_syntax(format_registry):
    path = PYDICOM_FILES / "JPEG-lossy.dcm"  # a 12-bit JPEG Extended file libjpeg rejects ("misplaced marker")
    with pytest.raises(DataError, match="that no installed decoder can decode") as caught:
        load_dataset(DataConfig(source=str(path), resolution=16), format_registry)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: compressed DICOM (JPEG Extended (Process 2 and 4)) that no installed decoder can decode")


def test_a_missing_decoder_names_the_package(format_registry, monkeypatch):
    """As if pylibjpeg-libjpeg were not installed: pydicom finds no JPEG-LS decoder."""
    from raresynth.plugins.formats import dicom

    class Unavailable:
        is_available = False

    monkeypatch.setattr(dicom, "get_decoder", lambda syntax: Unavailable())
    path = PYDICOM_FILES / "MR_small_jpeg_ls_lossless.dcm"
    with pytest.raises(DataError, match=r"compressed DICOM \(JPEG-LS Lossless Image Compression\) and no decoder installed; "
                                        r"pip install pylibjpeg pylibjpeg-libjpeg, or convert to uncompressed$"):
        load_dataset(DataConfig(source=str(path), resolution=16), format_registry)
    monkeypatch.setattr(dicom, "_installed", lambda package: package != "pylibjpeg-openjpeg")
    message = dicom._undecodable_message(path, pydicom.uid.JPEG2000Lossless, RuntimeError("no plugin"))
    assert message.endswith("no plugin; pip install pylibjpeg-openjpeg, or convert to uncompressed")
