"""DICOM: one ``.dcm`` file, or a folder of DICOM files (a series, a study, an export).

Pixel values go through the modality LUT (RescaleSlope / RescaleIntercept, so CT
is in Hounsfield units), MONOCHROME1 images are inverted so that bright always
means high signal, and the header's display window is passed on for
``intensity.mode: window`` / ``auto``. A multi-frame file gives one image per frame.

Patient data stays in the files: records hold paths, frame numbers and a hash of
the study and series UIDs (the format's own group: a series) and no header value
is ever copied, logged or written. The split groups by ``PatientID`` by default:
:meth:`Dicom.attribute_value` hands the core one attribute's value, which the core
hashes at once (``data.split.group_by``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.datadict
import pydicom.uid
from pydicom.dataset import Dataset as DicomDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from raresynth import DataError, DataFormat, PluginParams, RawImage, Record, did_you_mean

from ._files import files_to_scan, iter_files, one_line, relative_id, require_nonempty

try:  # pydicom >= 3
    from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder
except ImportError:  # pragma: no cover - pydicom 2.x
    from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut

    get_decoder = None

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Files that belong to a DICOM folder but hold no image of their own.
INDEX_FILE_NAMES = frozenset({"DICOMDIR"})


def has_dicom_preamble(path: Path) -> bool:
    """True when the file carries the 'DICM' marker at byte 128 (DICOM Part 10)."""
    try:
        with path.open("rb") as file:
            file.seek(128)
            return file.read(4) == b"DICM"
    except OSError:
        return False


def looks_like_dicom(path: Path) -> bool:
    """A ``.dcm`` / ``.dicom`` file, or any file with the 'DICM' marker."""
    return path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path)


class Dicom(DataFormat):
    """DICOM files, uncompressed or compressed (JPEG, JPEG-LS, JPEG 2000, RLE: pylibjpeg's decoders)."""

    class Params(PluginParams):
        pass

    description = "DICOM: a .dcm file or a folder of DICOM files (files without extension too); one image per frame"
    default_group_by = "PatientID"  # two series of one patient must not land on both sides of the split

    def __init__(self, params: PluginParams):
        super().__init__(params)
        self._cached_path: Path | None = None  # the last file decoded, so frames decode once
        self._cached_frames: np.ndarray | None = None
        self._cached_window: tuple[float, float] | None = None
        # (file, keyword, value) of the last attribute looked up, so frames read the header once
        self._cached_attribute: tuple[Path, str, str | None] | None = None

    @classmethod
    def can_read(cls, source: Path) -> bool:
        if source.is_file():
            return looks_like_dicom(source)
        if source.is_dir():
            files = [path for path in iter_files(source) if path.name not in INDEX_FILE_NAMES]
            # Suffixes first: cheap, and they settle most folders without opening a file.
            return any(p.suffix.lower() in DICOM_SUFFIXES for p in files) or any(has_dicom_preamble(p) for p in files)
        return False

    def scan(self, source: Path | None) -> list[Record]:
        """One record per frame of every file; every non-hidden file in a folder is a candidate.

        A file that cannot be parsed is still listed once, so that :meth:`read`
        reports why (and ``on_bad_file: skip`` can skip it).
        """
        root, files, records = files_to_scan(source, lambda p: p.name not in INDEX_FILE_NAMES)
        for path in files:
            record_id = relative_id(path, root)
            header = _read_header(path)
            if header is None:
                records.append(Record(id=record_id, source=path))
                continue
            group = _series_group(header) or record_id
            frames = _frame_count(header)
            if frames == 1:
                records.append(Record(id=record_id, source=path, group=group))
            else:
                records += [
                    Record(id=f"{record_id}#frame={i}", source=path, index=i, group=group, meta={"frame": i}) for i in range(frames)
                ]
        return records

    def read(self, record: Record) -> RawImage:
        if record.source != self._cached_path:
            self._cached_frames, self._cached_window = _decode(record.source)
            self._cached_path = record.source
        frames = self._cached_frames
        if record.index is None:
            pixels = frames[0]
        elif record.index < len(frames):
            pixels = frames[record.index]
        else:
            raise DataError(f"{record.source}: has {len(frames)} frame(s), no frame {record.index}")
        return RawImage(pixels=pixels, window=self._cached_window)

    def attribute_value(self, record: Record, attribute: str) -> str | None:
        """The header's value of ``attribute`` (a DICOM keyword), or None when absent, empty or unreadable."""
        if self._cached_attribute is not None and self._cached_attribute[:2] == (record.source, attribute):
            return self._cached_attribute[2]
        _require_keyword(attribute)
        header = _read_header(record.source)
        value = None if header is None else _attribute_text(header, attribute)
        self._cached_attribute = (record.source, attribute, value)
        return value


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _dcmread(path: Path, header_only: bool) -> DicomDataset:
    """Read a DICOM file, also a ``.dcm`` without the Part 10 preamble; DataError otherwise."""
    require_nonempty(path)
    with_preamble = has_dicom_preamble(path)
    if not with_preamble and path.suffix.lower() not in DICOM_SUFFIXES:
        raise DataError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128); remove it from the DICOM folder")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd elements; the checks below decide
            dataset = pydicom.dcmread(path, stop_before_pixels=header_only, force=not with_preamble)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on damaged headers
        raise DataError(f"{path}: truncated or corrupt DICOM header: {one_line(exc)}") from None
    if not with_preamble and not _has_dicom_elements(dataset):
        raise DataError(f"{path}: not a DICOM file (its content is not DICOM)")
    return dataset


def _has_dicom_elements(dataset: DicomDataset) -> bool:
    """Whether a force-read file holds real DICOM elements (identifying group 0008, or pixels)."""
    return any(tag.group == 0x0008 for tag in dataset.keys()) or any(k in dataset for k in PIXEL_DATA_KEYWORDS)


def _read_header(path: Path) -> DicomDataset | None:
    try:
        return _dcmread(path, header_only=True)
    except (DataError, OSError):
        return None


def _frame_count(header: DicomDataset) -> int:
    try:
        return max(1, int(header.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _require_keyword(keyword: str) -> None:
    if pydicom.datadict.tag_for_keyword(keyword) is None:
        raise DataError(
            f"data.split.group_by: '{keyword}' is not a DICOM attribute keyword (e.g. PatientID, StudyInstanceUID)."
            + did_you_mean(keyword, pydicom.datadict.keyword_dict)
        )


def _attribute_text(header: DicomDataset, keyword: str) -> str | None:
    if keyword not in header:
        return None
    element = header[keyword]
    if element.VR == "SQ":
        raise DataError(f"data.split.group_by: '{keyword}' is a DICOM sequence, not a value; choose an attribute such as PatientID")
    value = element.value
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value if value is not None else "")
    return text.strip() or None


def _series_group(header: DicomDataset) -> str:
    """A hash of the study and series UIDs: keeps a series together without storing the UIDs."""
    study, series = str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", ""))
    if not study and not series:
        return ""
    return hashlib.sha256(f"{study}/{series}".encode()).hexdigest()[:16]


def _decode(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """All frames of a file as ``(F, H, W)`` or ``(F, H, W, 3)``, and the header's window."""
    dataset = _dcmread(path, header_only=False)
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise DataError(f"{path}: has no image (Modality {dataset.get('Modality', 'unknown')}); remove it from the DICOM folder")
    transfer_syntax = _transfer_syntax(dataset)
    _require_decoder(transfer_syntax, path)
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError, RuntimeError... on damaged pixel data
        if transfer_syntax is not None and transfer_syntax.is_compressed:
            raise DataError(_undecodable_message(path, transfer_syntax, exc)) from None
        raise DataError(f"{path}: truncated or corrupt pixel data: {one_line(exc)}") from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    window = _header_window(dataset)
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    elif photometric.startswith("MONOCHROME"):
        pixels = apply_modality_lut(pixels, dataset)
        if photometric == "MONOCHROME1":  # low values are white: invert so that bright means high
            pixels, window = _invert(pixels, window)
    if _frame_count(dataset) == 1:
        pixels = pixels[None]
    return np.asarray(pixels), window


def _transfer_syntax(dataset: DicomDataset) -> pydicom.uid.UID | None:
    return getattr(dataset.file_meta, "TransferSyntaxUID", None) if hasattr(dataset, "file_meta") else None


def _require_decoder(transfer_syntax: pydicom.uid.UID | None, path: Path) -> None:
    """A compressed file whose decoder is missing: name the transfer syntax and the packages to install."""
    if transfer_syntax is None or not transfer_syntax.is_compressed or get_decoder is None:
        return
    try:
        available = get_decoder(transfer_syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DataError(
            f"{path}: compressed DICOM ({transfer_syntax.name}) and no decoder installed; "
            f"pip install {' '.join(_decoder_packages(transfer_syntax))}, or convert to uncompressed"
        )


def _undecodable_message(path: Path, transfer_syntax: pydicom.uid.UID, exc: Exception) -> str:
    """Why a compressed file did not decode: a decoder to install, or what the installed ones said."""
    missing = [package for package in _decoder_packages(transfer_syntax) if not _installed(package)]
    if missing:
        return (f"{path}: compressed DICOM ({transfer_syntax.name}) that the installed decoders cannot decode: "
                f"{one_line(exc)}; pip install {' '.join(missing)}, or convert to uncompressed")
    return (f"{path}: compressed DICOM ({transfer_syntax.name}) that no installed decoder can decode (the file may be damaged, "
            f"or need python-gdcm): {one_line(exc)}")


#: The module each decoder package installs (pip name -> import name).
DECODER_MODULES = {"pylibjpeg": "pylibjpeg", "pylibjpeg-libjpeg": "libjpeg", "pylibjpeg-openjpeg": "openjpeg",
                   "pylibjpeg-rle": "rle", "python-gdcm": "gdcm"}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(DECODER_MODULES[package]) is not None


def _decoder_packages(transfer_syntax: pydicom.uid.UID) -> list[str]:
    """The pip packages that decode ``transfer_syntax`` (raresynth's dependencies install the pylibjpeg ones)."""
    if transfer_syntax in pydicom.uid.JPEGLSTransferSyntaxes or transfer_syntax in pydicom.uid.JPEGTransferSyntaxes:
        return ["pylibjpeg", "pylibjpeg-libjpeg"]
    if transfer_syntax in pydicom.uid.JPEG2000TransferSyntaxes:  # HTJ2K included
        return ["pylibjpeg", "pylibjpeg-openjpeg"]
    if transfer_syntax in pydicom.uid.RLETransferSyntaxes:
        return ["pylibjpeg", "pylibjpeg-rle"]
    return ["python-gdcm"]


def _header_window(dataset: DicomDataset) -> tuple[float, float] | None:
    """(WindowCenter, WindowWidth), the first pair when the header lists several."""
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        center = float(center[0] if isinstance(center, MultiValue) else center)
        width = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (center, width) if width > 0 else None


def _invert(pixels: np.ndarray, window: tuple[float, float] | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Mirror values within their own range (x -> min + max - x), and the window with them."""
    low, high = pixels.min(), pixels.max()
    total = np.asarray(low, dtype=np.float64) + high
    inverted = (total - pixels).astype(pixels.dtype)
    if window is not None:
        window = (float(total) - window[0], window[1])
    return inverted, window
