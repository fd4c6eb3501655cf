"""SpineSSLLib.scene on slicer-core: volumes, levels markups and their files, in Slicer's RAS.

Ground truth comes from outside the code under test: Slicer's own DICOM/NRRD readers
(vtkMRMLVolumeArchetypeStorageNode -> ITK), Slicer's markups JSON writer/reader, and the
geometry the DICOM files were written with.
"""

import json

import numpy as np
import pytest

import slicer  # slicer-core (pyproject [test]): real MRML classes, no application

from SpineSSLLib import scene as S
from SpineSSLLib.errors import InputError, LevelsError
from SpineSSLLib.io import Scan
from SpineSSLLib.levels import Level, LevelSet
from SpineSSLLib.synth.dicom import write_series


def oblique_flipped_affine():
    """Sagittal scan tilted 12 degrees, slice index running to patient *right* (against the
    column x row normal, i.e. a left-handed IJK frame as some scanners store it)."""
    th = np.deg2rad(12.0)
    col = np.array([0.0, np.cos(th), np.sin(th)]) * 0.8  # i: anterior -> posterior, tilted
    row = np.array([0.0, np.sin(th), -np.cos(th)]) * 0.9  # j: superior -> inferior
    slc = np.array([-4.0, 0.0, 0.0])  # k: left -> right
    if np.dot(np.cross(col, row), slc) > 0:  # make sure it *is* against the normal
        slc = -slc
    a = np.eye(4)
    a[:3, 0], a[:3, 1], a[:3, 2], a[:3, 3] = col, row, slc, [12.5, -40.0, 95.0]
    return a


@pytest.fixture(scope="module")
def dicom_scan(tmp_path_factory):
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 900, size=(6, 28, 36)).astype(np.uint16)
    arr[2, 5, 30] = 4000  # a marker voxel: (i, j, k) = (30, 5, 2)
    affine = oblique_flipped_affine()
    out = tmp_path_factory.mktemp("dcm")
    files = write_series(out, arr, affine, {"PatientID": "SECRET-ID", "Modality": "MR"})
    return Scan(arr.astype(np.float32), affine), files


def assert_same_image(a: Scan, b: Scan):
    """Same voxel values at the same patient positions (slice order and handedness may differ)."""
    assert sorted(a.array.shape) == sorted(b.array.shape)
    K, J, I = a.array.shape
    kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    lps = a.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3))
    ijk_b = b.lps_to_index(lps)
    ijk_int = np.rint(ijk_b).astype(int)
    assert np.abs(ijk_b - ijk_int).max() < 1e-3
    assert np.array_equal(b.array[ijk_int[:, 2], ijk_int[:, 1], ijk_int[:, 0]], a.array.reshape(-1))


def test_ras_lps_flip_is_its_own_inverse():
    p = np.array([[1.0, -2.0, 3.0], [-4.5, 5.5, 0.0]])
    assert np.array_equal(S.ras_from_lps(p), [[-1.0, 2.0, 3.0], [4.5, -5.5, 0.0]])
    assert np.array_equal(S.lps_from_ras(S.ras_from_lps(p)), p)
    assert np.array_equal(S.ijk_to_ras(np.eye(4)), np.diag([-1.0, -1.0, 1.0, 1.0]))


def test_volume_node_from_scan_matches_slicers_own_dicom_reader(dicom_scan):
    scan, files = dicom_scan
    scene = slicer.vtkMRMLScene()
    ours = S.volume_node_from_scan(scene, scan, "ours")
    theirs = S.load_volume(scene, files, name="slicer reader")  # ITK/GDCM inside Slicer
    # our node's geometry is the DICOM geometry converted to RAS
    m_ours = S.volume_to_world_ras(ours)
    assert np.allclose(m_ours, np.diag([-1, -1, 1, 1]) @ scan.affine, atol=1e-9)
    # Slicer's reader may order slices differently; compare physically, voxel by voxel
    assert_same_image(scan, S.scan_from_volume_node(theirs))
    # the marker voxel sits at the same RAS point in both nodes, and RAS is flipped LPS
    marker_lps = scan.index_to_lps([30, 5, 2])
    for node in (ours, theirs):
        ras = S.volume_to_world_ras(node)
        ijk = np.linalg.solve(ras, np.r_[S.ras_from_lps(marker_lps), 1.0])[:3]
        i, j, k = np.rint(ijk).astype(int)
        assert slicer.util.arrayFromVolume(node)[k, j, i] == 4000


def test_scan_round_trip_through_volume_node_is_exact(dicom_scan):
    scan, _ = dicom_scan
    scene = slicer.vtkMRMLScene()
    node = S.volume_node_from_scan(scene, scan, "v")
    back = S.scan_from_volume_node(node)
    assert back.array.dtype == np.float32
    assert np.array_equal(back.array, scan.array)
    assert np.allclose(back.affine, scan.affine, atol=1e-12)


def test_parent_linear_transform_is_applied_when_reading_a_volume(dicom_scan):
    scan, _ = dicom_scan
    scene = slicer.vtkMRMLScene()
    node = S.volume_node_from_scan(scene, scan, "v")
    tnode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -7.0, 2.0]  # RAS shift
    tnode.SetMatrixTransformToParent(S._vtk_matrix(shift))
    node.SetAndObserveTransformNodeID(tnode.GetID())
    back = S.scan_from_volume_node(node)
    # +5 R = -5 L, -7 A = +7 P in LPS
    assert np.allclose(back.affine[:3, 3], scan.affine[:3, 3] + [-5.0, 7.0, 2.0])


def test_nrrd_save_and_load_back_identical(dicom_scan, tmp_path):
    scan, _ = dicom_scan
    scene = slicer.vtkMRMLScene()
    node = S.volume_node_from_scan(scene, scan, "v")
    path = S.save_volume(node, tmp_path / "v.nrrd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nrrd"]  # no temp file left behind
    back = S.load_volume(slicer.vtkMRMLScene(), path)
    assert back.GetName() == "v"
    # Slicer's NRRD reader turns the left-handed frame right-handed (slices reversed): same image
    assert_same_image(scan, S.scan_from_volume_node(back))


def test_load_volume_reports_the_file_on_bad_input(tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\nthis is not a header\n")
    with pytest.raises(InputError, match="broken.nrrd"):
        S.load_volume(slicer.vtkMRMLScene(), bad)
    with pytest.raises(InputError, match="missing.nrrd"):
        S.load_volume(slicer.vtkMRMLScene(), tmp_path / "missing.nrrd")


def _levels():
    rng = np.random.default_rng(3)
    lv = {}
    for n, name in enumerate(["T12", "L1", "L2", "L3", "L4", "L5", "S1"]):
        c = np.array([2.0, 10.0 + n, 120.0 - 35.0 * n]) + rng.normal(0, 1, 3)
        corners = c + np.array([[0, -15, 12], [0, 15, 12], [0, 15, -12], [0, -15, -12]], float)
        lv[name] = Level(name, c, corners=corners)
    return LevelSet(lv, source="test")


def test_levels_become_locked_labelled_ras_points_and_come_back_in_lps():
    levels = _levels()
    scene = slicer.vtkMRMLScene()
    node = S.markups_from_levels(scene, levels, "scan levels")
    assert node.GetLocked()
    assert node.GetNumberOfControlPoints() == 7 * 5  # centre + 4 hidden corners per level
    for i, level in enumerate(levels):
        assert node.GetNthControlPointLabel(i) == level.name
        assert node.GetNthControlPointLocked(i) and node.GetNthControlPointVisibility(i)
    corner_labels = [node.GetNthControlPointLabel(i) for i in range(7, 11)]
    assert corner_labels == ["T12-AS", "T12-PS", "T12-PI", "T12-AI"]
    assert not any(node.GetNthControlPointVisibility(i) for i in range(7, 35))
    for i, level in enumerate(levels):
        pos = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(i, pos)
        assert np.allclose(pos, [-level.centroid[0], -level.centroid[1], level.centroid[2]])
    back = S.levels_from_markups(node)
    assert back.names == levels.names
    for a in levels:
        assert np.allclose(back[a.name].centroid, a.centroid, atol=1e-9)
        assert np.allclose(back[a.name].corners, a.corners, atol=1e-3)


def test_mrk_json_written_in_lps_and_read_back_identical(tmp_path):
    levels = _levels()
    scene = slicer.vtkMRMLScene()
    node = S.markups_from_levels(scene, levels, "scan levels")
    path = S.save_markups(node, tmp_path / "scan levels.mrk.json")
    doc = json.loads(path.read_text())
    m = doc["markups"][0]
    assert m["coordinateSystem"] == "LPS" and m["locked"] is True
    on_disk = {p["label"]: p["position"] for p in m["controlPoints"]}
    for level in levels:  # the file holds DICOM LPS, as Slicer writes it
        assert np.allclose(on_disk[level.name], level.centroid, atol=1e-6)
    back_node = S.load_markups(slicer.vtkMRMLScene(), path)
    assert back_node.GetName() == "scan levels"
    back = S.levels_from_markups(back_node)
    assert back.to_dict()["levels"] == S.levels_from_markups(node).to_dict()["levels"]


def test_mrk_json_in_ras_coordinates_is_read_correctly(tmp_path):
    """Slicer can save markups with coordinateSystem RAS; the levels must still come out in LPS."""
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                   "Schema/markups-schema-v1.0.3.json#",
        "markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "mm",
                     "controlPoints": [
                         {"id": "1", "label": "L4", "position": [10.0, 20.0, 30.0], "positionStatus": "defined"},
                         {"id": "2", "label": "l5", "position": [11.0, 22.0, -5.0], "positionStatus": "defined"},
                         {"id": "3", "label": "L5-AS", "position": [11.0, 7.0, 5.0], "positionStatus": "defined"},
                     ]}],
    }
    path = tmp_path / "ras.mrk.json"
    path.write_text(json.dumps(doc))
    levels = S.levels_from_markups(S.load_markups(slicer.vtkMRMLScene(), path))
    assert levels.names == ["L4", "L5"]
    assert np.allclose(levels["L4"].centroid, [-10.0, -20.0, 30.0])
    assert np.allclose(levels["L5"].centroid, [-11.0, -22.0, -5.0])
    assert any("L5: only 1 of 4 corners" in issue for issue in levels.issues)


def test_unknown_point_label_is_an_error_naming_the_node():
    import vtk

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "my points")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, 0), "L4")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, 9), "F-2")
    with pytest.raises(LevelsError, match="my points.*F-2"):
        S.levels_from_markups(node)


def test_placement_helper_has_seven_unplaced_labels_and_partial_placement_reports_the_rest():
    import vtk

    scene = slicer.vtkMRMLScene()
    node = S.level_placement_markups(scene, "place")
    labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
    assert labels == ["T12", "L1", "L2", "L3", "L4", "L5", "S1"]
    assert node.GetNumberOfDefinedControlPoints() == 0
    with pytest.raises(LevelsError, match="no placed points labelled T12..S1"):
        S.levels_from_markups(node)
    node.SetNthControlPointPosition(4, vtk.vtkVector3d(-1.0, -2.0, 3.0))  # user places L4
    levels = S.levels_from_markups(node)
    assert levels.names == ["L4"]
    assert np.allclose(levels["L4"].centroid, [1.0, 2.0, 3.0])
    assert "S1: not in markups" in levels.issues  # unplaced points are skipped


def test_a_level_placed_twice_is_skipped_and_reported():
    import vtk

    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "dup")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, 0), "L4")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, 9), "L4")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, -30), "L5")
    levels = S.levels_from_markups(node)
    assert levels.names == ["L5"]
    assert any(issue.startswith("L4: duplicate") for issue in levels.issues)


def test_dicom_folder_is_read_in_slice_position_order_not_file_name_order(dicom_scan, tmp_path):
    scan, _ = dicom_scan
    K = scan.array.shape[0]
    names = [f"IMG{(7 * k) % K:04d}" for k in range(K)]  # names scrambled relative to positions
    write_series(tmp_path / "scrambled", scan.array.astype(np.uint16), scan.affine, {"Modality": "MR"},
                 file_names=names)
    node = S.load_volume(slicer.vtkMRMLScene(), tmp_path / "scrambled")
    assert_same_image(scan, S.scan_from_volume_node(node))
    # a folder holding two series is refused with the folder named
    write_series(tmp_path / "scrambled", scan.array.astype(np.uint16)[::-1].copy(), scan.affine,
                 {"Modality": "MR"}, file_names=[f"other{k}" for k in range(K)])
    with pytest.raises(InputError, match="2 DICOM series.*scrambled|scrambled.*2 DICOM series"):
        S.load_volume(slicer.vtkMRMLScene(), tmp_path / "scrambled")
