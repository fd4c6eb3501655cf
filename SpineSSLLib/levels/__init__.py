"""Vertebra levels: the one internal structure every level source fills.

A ``Level`` is a vertebral body T12...S1 in *patient LPS millimetres* (DICOM convention):
its centroid, the four corners of its mid-sagittal outline and the sagittal slices it spans.

Corner order (all sources, all files): anterior-superior, posterior-superior,
posterior-inferior, anterior-inferior.  "Anterior" is -P (towards the belly: smaller LPS y),
"superior" is +S (larger LPS z).

Parts (every public name is re-exported here: ``from SpineSSLLib.levels import X`` as before):
  ``core``      ``Level``, ``LevelSet``, ``CORNER_NAMES``
  ``geometry``  corner order, spine axis, corners from centres, levels inside a scan, ``prepared_levels``
  ``readers``   truth / saved level-set JSON, Slicer markups, SpineNet detections
  ``labelmap``  label maps (presets, mapping files, ``from_labelmap``)
  ``sources``   where a batch's levels and grades come from: ``LevelSource`` (``--levels KIND:FOLDER``),
                ``truth_grades``, ``load_grades_csv`` (grade tables, SPIDER's gradings)
"""

from .core import CORNER_NAMES, Level, LevelSet  # noqa: F401
from .geometry import (  # noqa: F401
    EST_HEIGHT_FACTOR, EST_WIDTH_FACTOR, check_in_volume, estimate_corners, order_corners, prepared_levels,
    spine_axis,
)
from .labelmap import (  # noqa: F401
    LABEL_PRESETS, align_to_grid, from_labelmap, load_label_mapping, resolve_label_mapping,
)
from .readers import (  # noqa: F401
    from_markups, from_spinenet, from_truth_json, load_spinenet_json, parse_point_label, to_markups_dict,
)
from .sources import LEVEL_SOURCES, SPIDER_IVD, LevelSource, load_grades_csv, truth_grades  # noqa: F401
