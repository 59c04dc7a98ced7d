"""Real medical test images that installed packages ship (no download)."""

from pathlib import Path

import pydicom
from nibabel.testing import data_path as NIBABEL_DATA

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # CT/MR files shipped with pydicom
ANATOMICAL = Path(NIBABEL_DATA) / "anatomical.nii"  # a 3D MR volume shipped with nibabel
EXAMPLE_4D = Path(NIBABEL_DATA) / "example4d.nii.gz"  # a 4D (2 time points) volume
