"""Label-map presets for real tools (issue #15 part 2): TotalSegmentator (``vertebrae_mr``) and
TotalSpineSeg numberings; whole-bone labels (body + posterior elements, whole sacrum) reduced to
the vertebral bodies the extraction needs; numbering checks; Slicer segmentation nodes named
the TotalSegmentator way; the synthetic cohort's label maps relabelled into each numbering give
the truth's levels and volumes."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import slicer  # slicer-core (pyproject [test]): real MRML classes, no application
from extract_phantom import phantom_scan
from label_helpers import TOTALSEG_MR, TOTALSPINESEG, relabel_synthetic, whole_bone_labels

from SpineSSLLib import LEVEL_NAMES
from SpineSSLLib import levels as L
from SpineSSLLib import scene as S
from SpineSSLLib.cli import main as cli
from SpineSSLLib.errors import LevelsError
from SpineSSLLib.extract import extract_scan, load_volumes
from SpineSSLLib.io import Scan
from SpineSSLLib.labelmaps import segment_structure

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOOLS = {"totalseg_mr": TOTALSEG_MR, "totalspineseg": TOTALSPINESEG}
CENTRE = np.array([111.5, 111.5, 4.0, 1.0])


@pytest.fixture(scope="module")
def phantom():
    return phantom_scan(shape=(13, 256, 112), spacing=(1.2, 1.2, 4.0))


@pytest.fixture(scope="module")
def bones(phantom):
    scan, lv = phantom
    return {tool: whole_bone_labels(scan.affine, scan.shape, lv, values) for tool, values in TOOLS.items()}


def test_preset_ids_are_the_tools_class_ids():
    ts, tss = L.resolve_label_mapping("totalseg_mr"), L.resolve_label_mapping("totalspineseg")
    # TotalSegmentator class_map["vertebrae_mr"]: 1 sacrum, 2 vertebrae_L5 ... 7 vertebrae_T12
    assert dict(ts) == {2: "L5", 3: "L4", 4: "L3", 5: "L2", 6: "L1", 7: "T12"} and ts.sacrum == 1
    # TotalSpineSeg: 32 vertebrae_T12, 41-45 vertebrae_L1-L5, 50 sacrum, 91-95 + 100 discs
    assert dict(tss) == {32: "T12", 41: "L1", 42: "L2", 43: "L3", 44: "L4", 45: "L5"} and tss.sacrum == 50
    assert tss.discs == {91: "T12-L1", 92: "L1-L2", 93: "L2-L3", 94: "L3-L4", 95: "L4-L5", 100: "L5-S1"}
    assert tss.transitional == (46, 47)


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_whole_bone_labels_give_the_vertebral_bodies(phantom, bones, tool):
    scan, lv = phantom
    lab = bones[tool]
    got = L.from_labelmap(Scan(lab.astype(np.float32), scan.affine), scan, L.resolve_label_mapping(tool),
                          where="seg.nii.gz")
    assert got.names == list(LEVEL_NAMES)
    assert got.issues == ["S1: taken from the sacrum label (its top segment, one L5 height)"]
    px = scan.spacing[0]
    for n in LEVEL_NAMES:
        err_c = np.linalg.norm(got[n].centroid - lv[n].centroid)
        err_k = np.max(np.linalg.norm(got[n].corners - lv[n].corners, axis=1))
        if n == "S1":  # cut from the whole sacrum (alae, crest, S2-S3 below)
            assert err_c < 0.5 * px and err_k < 2.0 * px, (n, err_c, err_k)
        else:  # posterior elements and transverse processes removed
            assert err_c < 0.25 * px and err_k < 1.0 * px, (n, err_c, err_k)
            whole = np.argwhere(lab == {v: k for k, v in L.resolve_label_mapping(tool).items()}[n])
            naive = scan.index_to_lps(whole[:, ::-1].mean(axis=0).astype(float))
            assert np.linalg.norm(naive - lv[n].centroid) > 4.0  # the whole bone's centre is far off
    ref = extract_scan(scan, lv)
    out = extract_scan(scan, got)
    assert out.vb_present.all() and out.ivd_present.all()
    for a, b in ((ref.vb, out.vb), (ref.ivd, out.ivd)):
        assert np.abs(a - b).mean() < 0.02
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97


def test_other_numberings_are_refused_with_the_reason(phantom, bones):
    scan, lv = phantom
    total_mr = np.zeros(scan.shape, np.int32)  # TotalSegmentator total_mr: 18 sacrum, 19 vertebrae ...
    total_mr[bones["totalseg_mr"] == 1] = 18
    total_mr[(bones["totalseg_mr"] > 1)] = 19
    total_mr[:, :10, :10] = 46  # autochthon_left
    cases = [(total_mr, "totalseg_mr", "label value(s) 46 are not in the totalseg_mr numbering (TotalSegmentator "
                                       "--task vertebrae_mr writes 1-25; total_mr has a single 'vertebrae' class "
                                       "without levels)"),
             (bones["totalspineseg"], "totalseg_mr", "label value(s) 31, 32, 41, 42, 43, 44, ... are not in the "
                                                     "totalseg_mr numbering"),
             (bones["totalseg_mr"], "totalspineseg", "label value(s) 3, 4, 5, 6, 7, 8 are not in the "
                                                     "totalspineseg numbering (TotalSpineSeg's final output")]
    for lab, tool, cause in cases:
        with pytest.raises(LevelsError) as e:
            L.from_labelmap(Scan(lab.astype(np.float32), scan.affine), scan, L.resolve_label_mapping(tool),
                            where="seg.nii.gz")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("seg.nii.gz: ") and cause in msg, msg


def test_transitional_vertebra_and_disc_numbering_are_flagged(phantom, bones):
    scan, _ = phantom
    tss = L.resolve_label_mapping("totalspineseg")
    lab = bones["totalspineseg"].copy()
    six = lab.copy()  # one more lumbar vertebra: the lowest lumbar is L6
    for old, new in ((45, 46), (44, 45), (43, 44), (42, 43), (41, 42), (32, 41), (31, 32)):
        six[lab == old] = new
    got = L.from_labelmap(Scan(six.astype(np.float32), scan.affine), scan, tss, where="six")
    assert "S1" not in got.names and got.names[-1] == "L5"
    assert "S1: label 46 (a transitional lumbosacral vertebra, L6) is present; S1 is not taken from the sacrum" \
        in got.issues
    swapped = lab.copy()
    swapped[lab == 94], swapped[lab == 92] = 92, 94
    got = L.from_labelmap(Scan(swapped.astype(np.float32), scan.affine), scan, tss, where="swapped")
    assert [s for s in got.issues if "disc label" in s] == [
        "L1-L2: the disc label is not between L1 and L2 (check the label numbering)",
        "L3-L4: the disc label is not between L3 and L4 (check the label numbering)"]


def test_segment_names():
    names = {"L3": "L3", "vertebrae_L3": "L3", "L3 vertebra": "L3", "vertebrae_T12": "T12", "vertebrae_S1": "S1",
             "sacrum": "sacrum", "Sacrum": "sacrum", "disc_L4_L5": "L4-L5", "disc_L5_S1": "L5-S1", "disc_L5_S": "L5-S1",
             "L4-L5": "L4-L5", "vertebrae_C7": None, "vertebrae_T11": None, "spinal_canal": None, "liver": None,
             "intervertebral_discs": None, "vertebrae": None}
    assert {n: segment_structure(n) for n in names} == names


# --------------------------------------------------------------------------------------------
# the synthetic cohort's label maps in each tool's numbering, through the CLI
# --------------------------------------------------------------------------------------------

def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from SpineSSLLib.synth import generate_cohort
    from SpineSSLLib.synth.config import preset

    out = tmp_path_factory.mktemp("presets") / "syn"
    generate_cohort(out, preset("tiny", subjects=2, followup_fraction=0.5, twin_fraction=0.0))
    c = out.parent / "C"
    assert cli(["-q", "index", str(out / "dicom"), "--out", str(c)]) == 0
    c_syn = out.parent / "C_synthetic"  # the same label maps in SpineSSL's own numbering
    shutil.copytree(c, c_syn)
    assert cli(["-q", "extract", str(c), "--levels", f"truth:{out / 'truth'}"]) == 0
    assert cli(["-q", "extract", str(c_syn), "--levels", f"labels:{out / 'truth'}",
                "--label-mapping", "synthetic"]) == 0
    return out, c, c_syn


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_synthetic_label_maps_in_the_tools_numbering_extract_like_the_truth(cohort, tmp_path, tool):
    import SimpleITK as sitk

    out, c, c_syn = cohort
    lab_dir = tmp_path / "labels"
    lab_dir.mkdir()
    for p in (out / "truth").glob("*_labels.nii.gz"):
        img = sitk.ReadImage(str(p))
        new = sitk.GetImageFromArray(relabel_synthetic(sitk.GetArrayFromImage(img), TOOLS[tool]).astype(np.uint16))
        new.CopyInformation(img)
        sitk.WriteImage(new, str(lab_dir / p.name))
    c2 = tmp_path / "C2"
    shutil.copytree(c, c2, ignore=shutil.ignore_patterns("volumes", "qc", "volumes.csv", "scans.csv"))
    assert cli(["-q", "extract", str(c2), "--levels", f"labels:{lab_dir}", "--label-mapping", tool]) == 0
    truth_rows, rows = _csv(c / "volumes.csv"), _csv(c2 / "volumes.csv")
    n_scans = len(_csv(c / "scans.csv"))
    assert n_scans == 3 and len(rows) == len(truth_rows) == 13 * n_scans  # all 7 VBs, 6 IVDs
    for p in (c / "volumes").glob("*.npz"):
        a, b = load_volumes(p), load_volumes(c2 / "volumes" / p.name)
        for aff_a, aff_b in ((a.vb_affine, b.vb_affine), (a.ivd_affine, b.ivd_affine)):
            d = aff_a[:, :3] @ CENTRE - aff_b[:, :3] @ CENTRE
            step = a.vb_affine[0, :3, 2]
            across = d @ step / (step @ step)
            inplane = d - across[:, None] * step
            assert np.linalg.norm(inplane, axis=1).max() < 2.0  # the label-map tolerance (docs/extraction.md)
            assert np.abs(across).max() <= 1.0 + 1e-6
        assert np.corrcoef(a.vb.ravel(), b.vb.ravel())[0, 1] > 0.8
        assert np.corrcoef(a.ivd.ravel(), b.ivd.ravel())[0, 1] > 0.8
        # against the same maps in SpineSSL's numbering: T12..L3 and T12-L1..L3-L4 identical;
        # where S1 (the sacrum label cut to its S1 segment) reaches, through L5's spine axis and
        # the neighbours' intensity medians (L4, L5, S1, L4-L5, L5-S1), nearly so
        s = load_volumes(c_syn / "volumes" / p.name)
        np.testing.assert_array_equal(b.vb[:4], s.vb[:4])
        np.testing.assert_array_equal(b.ivd[:4], s.ivd[:4])
        for x, y in zip(list(b.vb[4:]) + list(b.ivd[4:]), list(s.vb[4:]) + list(s.ivd[4:])):
            assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.97


# --------------------------------------------------------------------------------------------
# Slicer: a TotalSegmentator segmentation node as the level input
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("names", ["ids", "standard"])
def test_totalsegmentator_segmentation_node_gives_the_levels(phantom, bones, names):
    """Segments as SlicerTotalSegmentator creates them: ID = class name (``vertebrae_L3``,
    ``sacrum``), name = the class name or its standard name (``L3 vertebra``, ``Sacrum``), next
    to segments that are not vertebrae."""
    scan, lv = phantom
    scene = slicer.vtkMRMLScene()
    node = S.volume_node_from_scan(scene, scan, "T2")
    seg = S.segmentation_from_shapes(scene, [], [], "TotalSegmentator", scan.affine)
    lab = bones["totalseg_mr"]
    classes = {1: ("sacrum", "Sacrum"), 2: ("vertebrae_L5", "L5 vertebra"), 3: ("vertebrae_L4", "L4 vertebra"),
               4: ("vertebrae_L3", "L3 vertebra"), 5: ("vertebrae_L2", "L2 vertebra"),
               6: ("vertebrae_L1", "L1 vertebra"), 7: ("vertebrae_T12", "T12 vertebra"),
               8: ("vertebrae_T11", "T11 vertebra")}
    for value, (seg_id, standard) in classes.items():
        sid = seg.GetSegmentation().AddEmptySegment(seg_id, standard if names == "standard" else seg_id)
        img = S._oriented_image(lab == value, (0, 0, 0), scan.affine)
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(img, seg, sid)
    seg.GetSegmentation().AddEmptySegment("liver", "liver")
    got = S.levels_from_label_node(seg, node)
    direct = L.from_labelmap(Scan(lab.astype(np.float32), scan.affine), scan, L.resolve_label_mapping("totalseg_mr"),
                             where="x")
    assert got.names == list(LEVEL_NAMES) == direct.names
    for n in LEVEL_NAMES:
        np.testing.assert_allclose(got[n].centroid, direct[n].centroid, atol=1e-6)
        np.testing.assert_allclose(got[n].corners, direct[n].corners, atol=1e-6)
        assert np.linalg.norm(got[n].centroid - lv[n].centroid) < scan.spacing[0]
    empty = S.segmentation_from_shapes(scene, [], [], "organs", scan.affine)
    empty.GetSegmentation().AddEmptySegment("liver", "liver")
    with pytest.raises(LevelsError, match="no segment named after a vertebra"):
        S.levels_from_label_node(empty, node)
