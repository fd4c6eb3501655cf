"""The MRML scene layer: SpineSSLLib structures <-> Slicer nodes, without Qt.

Every function takes the ``vtkMRMLScene`` (or nodes in it) as an argument, so the same code runs
inside 3D Slicer, in ``Slicer --no-main-window`` batch mode and under pytest with the
``slicer-core`` package (real MRML classes, no application).

Coordinates: SpineSSLLib works in patient **LPS** (DICOM); Slicer's scene is **RAS**.  This module
is the only place where the two meet: ``RAS = diag(-1, -1, 1) . LPS``.  A volume node's IJK->RAS
matrix is ``diag(-1, -1, 1, 1) @ Scan.affine`` (``Scan`` maps ``(i, j, k, 1)`` -> LPS and its array
is ``(K, J, I)``, which is exactly ``slicer.util.arrayFromVolume``'s axis order).

Outputs for one input volume ``V`` (names follow the input volume):
  ``V levels``        markups point list, one locked labelled point per vertebral body T12..S1
  ``V structures``    segmentation, one segment per disc (and VB), coloured by predicted grade
  ``V grades``        table node: level, grade, class probabilities, comparison distance
  ``V probabilities`` plot chart of the class probabilities per disc
Files: ``<stem>.mrk.json``, ``<stem>.seg.nrrd``, ``<stem>.csv`` (+ ``.schema.csv``), ``.nrrd``.

Parts (one concept each; every public name is re-exported here, so ``from SpineSSLLib import scene``
and ``scene.X`` work as before):
  ``nodes``         output names, grade colours, segment terminology, LPS <-> RAS, Slicer helpers
  ``volumes``       volume node <-> ``Scan``, volume files
  ``markups``       levels <-> markups, levels from label-map / segmentation nodes
  ``results``       results rows <-> table node, plot, colour legend, table files
  ``segmentation``  extraction geometry -> segmentation, segment masks and centroids, ``.seg.nrrd``
  ``workflow``      one volume's outputs (extract, show, save); grading and comparison on one scan
"""

from .markups import (  # noqa: F401
    level_placement_markups, levels_from_label_node, levels_from_markups, levels_from_segmentation_node,
    load_markups, markups_from_levels, save_markups,
)
from .nodes import (  # noqa: F401
    GRADE_COLORS, GRADE_LABELS, GRADE_TAG, KIND_TAG, LEVELS_SUFFIX, LPS_TO_RAS, PLOT_SUFFIX, SEGMENTATION_SUFFIX,
    TABLE_SUFFIX, TERMINOLOGY_CONTEXT, VB_COLOR, _slicer, _vtk_matrix, ijk_to_ras, lps_from_ras, ras_from_lps,
    register_segmentation_converters, terminology_entry,
)
from .results import (  # noqa: F401
    StructureResult, grade_color_table, load_table, plot_from_table, results_from_grades, results_from_table,
    save_table, table_from_results,
)
from .segmentation import (  # noqa: F401
    StructureShape, _oriented_image, load_segmentation, save_segmentation, segment_centroids, segment_info,
    segment_mask, segmentation_from_shapes, segmentation_grid, structure_shapes,
)
from .volumes import load_volume, save_volume, scan_from_volume_node, volume_node_from_scan, volume_to_world_ras  # noqa: F401
from .workflow import (  # noqa: F401
    SceneOutputs, compare_volumes, extract_in_scene, file_stem, grade_volumes, output_names, prepared_levels,
    results_from_grades_doc, save_outputs, show_results,
)
