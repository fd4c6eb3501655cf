"""VB (224x224x9) and IVD (112x224x9) volumes from a scan and its levels (paper §2.1).

Modules: ``volumes`` (the geometry: ``ExtractConfig``, ``extract_scan`` -> ``ScanVolumes``),
``files`` (the ``volumes/<scan_key>.npz`` contract), ``qc`` (QC picture), ``batch`` (``spine-ssl
extract``: ``run_extraction`` and its manifests).  The public names are re-exported here, with
``LevelSource`` and ``load_grades_csv`` (where a batch's levels and grades come from), which live in
``levels.sources``.
"""

from ..levels.sources import LEVEL_SOURCES, LevelSource, load_grades_csv  # noqa: F401
from .batch import SCAN_COLUMNS, VOLUME_COLUMNS, ExtractSummary, run_extraction  # noqa: F401
from .files import load_volumes, save_volumes  # noqa: F401
from .qc import qc_figure  # noqa: F401
from .volumes import ExtractConfig, ScanVolumes, extract_scan  # noqa: F401
