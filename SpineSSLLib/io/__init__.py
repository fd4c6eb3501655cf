"""Image input/output: the ``Scan`` structure and readers for DICOM series and NIfTI/NRRD/MHA.

Conventions used everywhere in SpineSSLLib:
- ``Scan.array`` is float32 with shape ``(K, J, I)`` = (sagittal slices, rows, columns).
- ``Scan.affine`` is a 4x4 matrix mapping the voxel index ``(i, j, k, 1)`` (column, row, slice)
  to patient **LPS** millimetres (DICOM convention).  Slicer's RAS appears only in ``scene``.

Parts (every public name is re-exported here: ``from SpineSSLLib.io import X`` as before):
  ``scan``      ``Scan``
  ``dicom``     one DICOM file's header (``read_header``, no pixel data), ``iter_files``
  ``geometry``  one series' slice order and affine (``series_geometry``), orientation/spacing checks
  ``pixels``    the one DICOM pixel decoder (``decode``; single- and multi-frame), rescale, content check
  ``readers``   ``read_dicom_series``, ``read_image`` (SimpleITK), ``read_scan``
Multi-frame (Enhanced MR) headers and frames: ``SpineSSLLib.multiframe``.
"""

from .dicom import DICOMDIR_CLASS, IMAGE_SUFFIXES, DicomHeader, is_image_file, iter_files, read_header  # noqa: F401
from .geometry import (  # noqa: F401
    PIXEL_SPACING_MM, SLICE_SPACING_MM, SeriesGeometry, check_sagittal, check_spacing, obliquity_deg, plane_name,
    series_geometry, unique_instances,
)
from .pixels import check_content, decode, read_pixels, rescale  # noqa: F401
from .readers import (  # noqa: F401
    acquired_normal, axis_permutation_for_sagittal, read_dicom_series, read_image, read_scan, to_sagittal_axes,
)
from .scan import Scan  # noqa: F401
