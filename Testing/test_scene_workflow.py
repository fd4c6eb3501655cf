"""The module workflow through the MRML scene layer on a real synthetic subject (slicer-core).

Ground truth: the synthetic cohort's truth JSON (levels, disc centroids and grades, in LPS), its
label map (read by Slicer's own reader), and the file-based pipeline (io -> levels -> extract).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core: real MRML classes

from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
from SpineSSLLib import scene as S
from SpineSSLLib.cli import main as cli
from SpineSSLLib.extract import extract_scan
from SpineSSLLib.io import read_scan
from SpineSSLLib.levels import from_truth_json

SPIDER_VB_LABEL = {"T12": 6, "L1": 5, "L2": 4, "L3": 3, "L4": 2, "L5": 1}


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    """One synthetic subject with two visits, written as DICOM by `spine-ssl synth`."""
    root = tmp_path_factory.mktemp("synth") / "cohort"
    assert cli(["-q", "synth", str(root), "--preset", "tiny", "--subjects", "1", "--seed", "3", "--workers", "1"]) == 0
    truths = sorted((root / "truth").glob("*.json"))
    scans = []
    for t in truths:
        doc = json.loads(t.read_text())
        scans.append({"truth": t, "doc": doc, "dicom": root / doc["dicom_dir"],
                      "labels": root / "truth" / doc["labelmap"]})
    scans.sort(key=lambda s: s["doc"]["visit"])
    assert len(scans) == 2
    return scans


@pytest.fixture(scope="module")
def baseline(subject):
    """Visit 0 through the file pipeline and through the scene layer (Slicer's DICOM reader)."""
    s = subject[0]
    scan_files = read_scan(s["dicom"])
    levels = from_truth_json(s["truth"])
    vol_files = extract_scan(scan_files, levels)
    scene = slicer.vtkMRMLScene()
    node = S.load_volume(scene, s["dicom"], name="spine T2")
    return dict(s, scan_files=scan_files, levels=levels, vol_files=vol_files, scene=scene, node=node)


def _ras_to_ijk(node, ras):
    m = S.volume_to_world_ras(node)
    return np.linalg.solve(m, np.r_[ras, 1.0])[:3]


def test_synthetic_dicom_loads_as_volume_node_whose_ras_matches_the_truth(subject):
    """Every visit (file names in position order or not, slice order flipped or not)."""
    for s in subject:
        scene = slicer.vtkMRMLScene()
        node = S.load_volume(scene, s["dicom"], name="spine T2")
        a, b = read_scan(s["dicom"]), S.scan_from_volume_node(node)
        # Slicer's reader and SpineSSLLib's reader see the same image at the same patient positions
        assert sorted(a.array.shape) == sorted(b.array.shape)
        K, J, I = a.array.shape
        kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
        lps = a.index_to_lps(np.stack([ii, jj, kk], -1).reshape(-1, 3))
        ijk = np.rint(b.lps_to_index(lps)).astype(int)
        assert np.abs(b.lps_to_index(lps) - ijk).max() < 1e-3, s["doc"]["visit"]
        assert np.allclose(b.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]], a.array.reshape(-1), atol=0.51)
        # the truth label map (NIfTI, read by Slicer) has each VB's label at its truth centroid (RAS)
        labels = S.load_volume(scene, s["labels"], name="labels")
        lab = slicer.util.arrayFromVolume(labels)
        for level in from_truth_json(s["truth"]):
            if level.name not in SPIDER_VB_LABEL:
                continue
            i, j, k = np.rint(_ras_to_ijk(labels, S.ras_from_lps(level.centroid))).astype(int)
            assert lab[k, j, i] == SPIDER_VB_LABEL[level.name], level.name
            i2, j2, k2 = _ras_to_ijk(node, S.ras_from_lps(level.centroid))
            assert 0 <= k2 < node.GetImageData().GetDimensions()[2]


def test_extraction_through_the_scene_equals_extraction_from_files(subject, baseline, tmp_path):
    for s in subject:
        scene = slicer.vtkMRMLScene()
        node = S.load_volume(scene, s["dicom"], name="spine T2")
        truth_levels = from_truth_json(s["truth"])
        ref = baseline["vol_files"] if s is subject[0] else extract_scan(read_scan(s["dicom"]), truth_levels)
        markups = S.markups_from_levels(scene, truth_levels, "spine T2 levels")
        path = S.save_markups(markups, tmp_path / f"levels{s['doc']['visit']}.mrk.json")
        levels = S.levels_from_markups(S.load_markups(slicer.vtkMRMLScene(), path))
        assert levels.names == truth_levels.names
        scan, used, vols = S.extract_in_scene(node, levels)
        assert np.array_equal(vols.vb_present, ref.vb_present) and np.array_equal(vols.ivd_present, ref.ivd_present)
        assert vols.vb_present.all() and vols.ivd_present.all()
        assert np.allclose(vols.vb_affine, ref.vb_affine, atol=1e-4)
        assert np.allclose(vols.ivd_affine, ref.ivd_affine, atol=1e-4)
        assert np.abs(vols.vb - ref.vb).max() < 1e-3
        assert np.abs(vols.ivd - ref.ivd).max() < 1e-3


@pytest.fixture(scope="module")
def shown(baseline):
    """Truth grades shown in the scene as the module shows predicted ones."""
    doc = baseline["doc"]
    grades = {d["name"]: d["grade"] for d in doc["discs"]}
    # class probabilities: a distribution peaked on the truth grade (real grade dictionaries, no model)
    probs = {d: [0.7 if g == c else 0.1 for c in (1, 2, 3, 4)] for d, g in grades.items() if g is not None}
    results = S.results_from_grades(grades, probs)
    scan, levels, vols = S.extract_in_scene(baseline["node"], baseline["levels"])
    out = S.show_results(baseline["scene"], baseline["node"], scan, levels, vols, results)
    return dict(baseline, out=out, grades=grades, results=results)


def test_grades_become_named_coloured_segments_table_and_locked_markups(shown):
    out, grades = shown["out"], shown["grades"]
    assert out.levels_node.GetName() == "spine T2 levels" and out.levels_node.GetLocked()
    assert out.segmentation_node.GetName() == "spine T2 structures"
    assert out.table_node.GetName() == "spine T2 grades"
    assert out.plot_node.GetName() == "spine T2 probabilities"
    assert out.plot_node.GetNumberOfPlotSeriesNodes() == 4
    info = {s["name"]: s for s in S.segment_info(out.segmentation_node)}
    assert set(info) == set(LEVEL_NAMES) | set(DISC_NAMES)
    for disc in DISC_NAMES:
        g = grades[disc]
        assert info[disc]["color"] == tuple(round(c, 4) for c in S.GRADE_COLORS[g])
        assert info[disc]["tags"][S.GRADE_TAG] == ("" if g is None else str(g))
        assert "SCT^360499006^Intervertebral disc" in info[disc]["tags"]["TerminologyEntry"]
    assert "SCT^11994002^L4 vertebra" in info["L4"]["tags"]["TerminologyEntry"]
    # the table holds the same grades and probabilities
    back = {r.name: r for r in S.results_from_table(out.table_node)}
    for r in shown["results"]:
        assert back[r.name].grade == r.grade
        assert back[r.name].probabilities == pytest.approx(r.probabilities)


def test_segment_centroids_are_within_2mm_of_the_truth_in_ras(shown):
    centroids = S.segment_centroids(shown["out"].segmentation_node)
    errors = {}
    for d in shown["doc"]["discs"]:
        errors[d["name"]] = np.linalg.norm(centroids[d["name"]] - S.ras_from_lps(d["centroid_lps"]))
    for level in shown["levels"]:
        errors[level.name] = np.linalg.norm(centroids[level.name] - S.ras_from_lps(level.centroid))
    worst = max(errors, key=errors.get)
    assert errors[worst] < 2.0, errors
    # in LPS the same centroids would be far off: the scene really is RAS
    d0 = shown["doc"]["discs"][3]
    assert np.linalg.norm(centroids[d0["name"]] - np.asarray(d0["centroid_lps"])) > 10


def test_saved_outputs_load_back_identical(shown, tmp_path):
    out = shown["out"]
    files = S.save_outputs(out, tmp_path, S.file_stem("spine T2"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "spine_T2.csv", "spine_T2.mrk.json", "spine_T2.schema.csv", "spine_T2.seg.nrrd"]
    scene = slicer.vtkMRMLScene()
    seg = S.load_segmentation(scene, files["segmentation"])
    assert S.segment_info(seg) == S.segment_info(out.segmentation_node)
    c0, c1 = S.segment_centroids(out.segmentation_node), S.segment_centroids(seg)
    assert all(np.allclose(c0[k], c1[k], atol=1e-6) for k in c0)
    grid, f = S.segmentation_grid(out.scan.affine)
    K, J, I = out.scan.array.shape
    shape = (K * f, J, I)
    for name in ("L4-L5", "L4"):
        assert np.array_equal(S.segment_mask(seg, name, grid, shape),
                              S.segment_mask(out.segmentation_node, name, grid, shape))
    levels = S.levels_from_markups(S.load_markups(scene, files["levels"]))
    assert levels.to_dict()["levels"] == S.levels_from_markups(out.levels_node).to_dict()["levels"]
    assert S.results_from_table(S.load_table(scene, files["table"])) == S.results_from_table(out.table_node)
    # no identifiers in what was written
    text = b"".join(Path(p).read_bytes() for p in files.values())
    assert b"PatientName" not in text and shown["doc"]["subject_id"].encode() not in text


def test_showing_again_updates_the_same_nodes(shown):
    scene, out = shown["scene"], shown["out"]
    before = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    again = S.show_results(scene, shown["node"], out.scan, out.levels, out.volumes, shown["results"])
    assert again.segmentation_node is out.segmentation_node and again.levels_node is out.levels_node
    after = [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]
    assert len(after) == len(before), sorted(set(after) - set(before))


def test_levels_from_a_labelmap_node_with_the_synthetic_preset_and_from_a_segmentation(baseline):
    scene, node = baseline["scene"], baseline["node"]
    labels = S.load_volume(scene, baseline["labels"], name="truth labels")
    from_labels = S.levels_from_label_node(labels, node, "synthetic")
    assert from_labels.names == list(LEVEL_NAMES)
    for level in baseline["levels"]:  # in the sagittal plane (the slab may cut a VB laterally)
        assert np.linalg.norm((from_labels[level.name].centroid - level.centroid)[1:]) < 3.0, level.name
    # the same levels from a segmentation whose segments are named after the levels
    seg = S.segmentation_from_shapes(scene, [], [], "level segments", S.scan_from_volume_node(node).affine)
    lab = slicer.util.arrayFromVolume(labels)
    spider = {2: "L4", 1: "L5", 26: "S1"}
    for value, name in spider.items():
        sid = seg.GetSegmentation().AddEmptySegment(name, name)
        scan_l = S.scan_from_volume_node(labels)
        mask = lab == value
        img = S._oriented_image(mask, (0, 0, 0), scan_l.affine)
        assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(img, seg, sid)
    from_seg = S.levels_from_label_node(seg, node)
    assert from_seg.names == ["L4", "L5", "S1"]
    for name in from_seg.names:
        assert np.linalg.norm(from_seg[name].centroid - from_labels[name].centroid) < 1.0


def test_grading_and_comparison_wiring_matches_the_model_run_directly(shown, tmp_path):
    """A grading checkpoint saved like `spine-ssl grade-train` does -> per-disc results equal to
    running the same network by hand; a pretraining checkpoint -> per-level fc7 distances."""
    import torch

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.grading import IVD_HW, predict_proba
    from SpineSSLLib.models import ModelConfig, VGGMNet

    torch.manual_seed(0)
    vols = shown["out"].volumes
    cfg = ModelConfig.preset("small")
    grader = VGGMNet(cfg, 4, IVD_HW)
    ckpt.save_checkpoint(tmp_path / "grade" / "best", grader, {
        "task": "grade", "model": cfg.to_dict(), "num_classes": 4, "in_hw": list(IVD_HW),
        "class_names": ["1", "2", "3", "4"]})
    results = S.grade_volumes(vols, tmp_path / "grade", tta=False, device="cpu")
    direct = predict_proba(grader.eval(), vols.ivd)
    assert [r.name for r in results] == list(DISC_NAMES)
    for r, p in zip(results, direct):
        assert r.probabilities == pytest.approx(p.tolist(), abs=1e-5)
        assert r.grade == int(np.argmax(p)) + 1
    from SpineSSLLib.models import SiameseNet

    embedder = SiameseNet(VGGMNet(cfg, 7, (224, 224)), 16)   # as pretraining saves it: projection head included
    ckpt.save_checkpoint(tmp_path / "pre", embedder, {"task": "pretrain", "model": cfg.to_dict(), "num_classes": 7,
                                                       "in_hw": [224, 224], "loss": {"projection": 16}})
    same = S.compare_volumes(vols, vols, tmp_path / "pre", threshold=0.5, device="cpu")
    assert [r.name for r in same] == list(LEVEL_NAMES)
    assert all(r.distance == pytest.approx(0.0, abs=1e-4) and r.same for r in same)
    # a different scan (the follow-up visit, or another level's volumes) gives positive distances
    shifted = type(vols)(**{**vols.__dict__, "vb": np.roll(vols.vb, 1, axis=0)})
    diff = S.compare_volumes(vols, shifted, tmp_path / "pre", threshold=None, device="cpu")
    assert all(r.distance > 0 and r.same is None for r in diff)
