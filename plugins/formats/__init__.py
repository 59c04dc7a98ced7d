"""raresynth's built-in data formats: image folders, DICOM, NIfTI and NumPy .npz.

An ordinary plugin (entry point ``formats``) that uses only raresynth's public API.
Each format is a small module: ``scan`` lists the 2D images a source holds and
``read`` decodes one; the core does every preprocessing step the same way for all.
"""

from raresynth import hookimpl

from .dicom import Dicom
from .image_folder import ImageFolder
from .nifti import Nifti
from .npz import Npz


@hookimpl
def raresynth_register_data_formats(register):
    register("image_folder", ImageFolder)
    register("dicom", Dicom)
    register("nifti", Nifti)
    register("npz", Npz)
