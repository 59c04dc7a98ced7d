"""Real medical test images that installed packages ship (no download)."""

from pathlib import Path

import pydicom
from nibabel.testing import data_path as NIBABEL_DATA

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # CT/MR files shipped with pydicom
ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"  # a 3D MR volume shipped with nibabel
EXAMPLE_4D = Path(NIBABEL_DATA) / "example4d.nii.gz"  # a 4D (2 time points) volume


def write_patient_series(folder: Path, patients: int = 6, series_per_patient: int = 2, files_per_series: int = 2) -> dict[str, list[str]]:
    """Copies of pydicom's real CT and MR files, rewritten with pydicom as several patients' series.

    Patient ``k`` has ``series_per_patient`` series, each in its own study, of
    ``files_per_series`` files; every file gets new UIDs and the patient's
    ``PatientID`` (``PAT-<k>``). File names (``scan<n>.dcm``) are numbered across
    patients in a shuffled order, so nothing in a record id names the patient.
    Returns ``{PatientID: [record ids]}``.
    """
    import random

    from pydicom.uid import generate_uid

    sources = [pydicom.dcmread(PYDICOM_FILES / name) for name in ("CT_small.dcm", "MR_small.dcm")]
    slots = [(k, s, f) for k in range(patients) for s in range(series_per_patient) for f in range(files_per_series)]
    random.Random(0).shuffle(slots)
    folder.mkdir(parents=True, exist_ok=True)
    by_patient: dict[str, list[str]] = {}
    for n, (k, s, f) in enumerate(slots):
        dataset = sources[(k + s) % len(sources)].copy()
        patient_id = f"PAT-{k:04d}"
        dataset.PatientID = patient_id
        dataset.PatientName = f"Test^Patient{k}"
        dataset.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(k), str(s)])
        dataset.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(k), str(s)])
        dataset.SOPInstanceUID = generate_uid(entropy_srcs=["image", str(k), str(s), str(f)])
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        name = f"scan{n:02d}.dcm"
        dataset.save_as(folder / name)
        by_patient.setdefault(patient_id, []).append(name)
    return {patient: sorted(names) for patient, names in sorted(by_patient.items())}
