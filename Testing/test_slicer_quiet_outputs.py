"""The scene layer on a bare slicer-core scene (batch mode, `make demo`) logs no VTK warnings, and
the module's terminology file holds every code its segments are tagged with."""

import json
from pathlib import Path

import numpy as np
import slicer  # slicer-core

from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
from SpineSSLLib import scene as S
from SpineSSLLib.io import Scan

REPO = Path(__file__).resolve().parents[1]


def _volume_and_segmentation(scene):
    array = np.zeros((5, 40, 40), np.float32)
    array[:, 10:30, 10:30] = 100.0
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    node = S.volume_node_from_scan(scene, Scan(array, affine), "vol")
    shape = S.StructureShape("L4", "VB", np.array([20.0, 20.0, 6.0]), np.eye(3), np.array([5.0, 5.0, 5.0]))
    seg = S.segmentation_from_shapes(scene, [shape], [], "seg", affine, node)
    return node, seg, affine, array.shape


def test_temporary_label_maps_find_their_colour_table(capfd):
    """`make demo` printed ~30 'the color table node: vtkMRMLColorTableNodeLabels can't be found'."""
    scene = slicer.vtkMRMLScene()
    _, seg, affine, shape = _volume_and_segmentation(scene)
    capfd.readouterr()
    mask = S.segment_mask(seg, "L4", affine, shape)
    assert mask.sum() > 0
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "levels")
    slicer.util.updateVolumeFromArray(labels, np.zeros(shape, np.uint8))
    err = capfd.readouterr().err
    assert "can't be found" not in err and "WARN" not in err, err
    assert scene.GetNodeByID("vtkMRMLColorTableNodeLabels").GetNumberOfColors() > 1


def test_saving_a_volume_logs_nothing(capfd, tmp_path):
    """The atomic write no longer hands VTK an existing file ('removing old version of file')."""
    scene = slicer.vtkMRMLScene()
    node, seg, _, _ = _volume_and_segmentation(scene)
    capfd.readouterr()
    path = S.save_volume(node, tmp_path / "v.nrrd")
    S.save_segmentation(seg, tmp_path / "v.seg.nrrd")
    captured = capfd.readouterr()
    assert "removing old version" not in captured.err + captured.out, captured
    assert path.is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_terminology_file_holds_every_code_the_segments_use():
    doc = json.loads((REPO / "SpineSSL" / "Resources" / "SegmentationCategoryTypeModifier-SpineSSL.term.json")
                     .read_text())
    assert doc["SegmentationCategoryTypeContextName"] == S.TERMINOLOGY_CONTEXT
    (category,) = doc["SegmentationCodes"]["Category"]
    types = {(t["CodingSchemeDesignator"], t["CodeValue"], t["CodeMeaning"]) for t in category["Type"]}
    for name in LEVEL_NAMES + DISC_NAMES:
        context, cat, typ = S.terminology_entry(name).split("~")[:3]
        assert context == doc["SegmentationCategoryTypeContextName"]
        assert cat == f"{category['CodingSchemeDesignator']}^{category['CodeValue']}^{category['CodeMeaning']}"
        assert tuple(typ.split("^")) in types, name
    # the file is a terminology Slicer's own logic loads
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    path = REPO / "SpineSSL" / "Resources" / "SegmentationCategoryTypeModifier-SpineSSL.term.json"
    assert logic.LoadTerminologyFromFile(str(path)) == S.TERMINOLOGY_CONTEXT
