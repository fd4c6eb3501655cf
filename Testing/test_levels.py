"""levels: adapters (truth JSON, Slicer markups LPS/RAS, label maps with presets/mapping files,
SpineNet vert_dicts) against the phantom's exact geometry; flagged bad inputs."""

import json

import numpy as np
import pytest
from extract_phantom import (SYNTH_LABELS, phantom_scan, render_labels, spinenet_dicts, truth_levels,
                             write_image)

from SpineSSLLib import LEVEL_NAMES
from SpineSSLLib import levels as L
from SpineSSLLib.errors import ConfigError, LevelsError
from SpineSSLLib.io import Scan


@pytest.fixture(scope="module")
def phantom():
    return phantom_scan(shape=(13, 256, 112), spacing=(1.2, 1.2, 4.0))


def assert_same_levels(a, b, tol=1e-6, corners=True):
    assert a.names == b.names
    for n in a.names:
        np.testing.assert_allclose(a[n].centroid, b[n].centroid, atol=tol)
        if corners:
            np.testing.assert_allclose(a[n].corners, b[n].corners, atol=tol)


def test_truth_json_roundtrip(tmp_path):
    lv = truth_levels()
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"schema": "spinessl.synth.truth/1", "levels": lv.to_dict(),
                             "discs": [{"name": "L4-L5", "grade": 3}, {"name": "L5-S1", "grade": None}]}))
    back = L.from_truth_json(p)
    assert_same_levels(back, lv, 1e-3)
    assert L.truth_grades(p) == {"L4-L5": 3}


def test_saved_level_set_is_read_like_truth(tmp_path):
    lv = truth_levels()
    p = tmp_path / "k.json"  # the layout `spine-ssl detect` writes (spinessl.levels/1)
    p.write_text(json.dumps({"schema": "spinessl.levels/1", "detector": "x", "key": "k", **lv.to_dict()}))
    assert_same_levels(L.from_truth_json(p), lv, 1e-3)


def test_truth_json_malformed(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(LevelsError, match="not valid JSON"):
        L.from_truth_json(p)
    p.write_text(json.dumps({"levels": {"levels": [{"name": "L9", "centroid_lps": [0, 0, 0]}]}}))
    with pytest.raises(LevelsError, match="unknown level"):
        L.from_truth_json(p)


@pytest.mark.parametrize("cs", ["LPS", "RAS"])
def test_markups_corners_in_lps_and_ras(tmp_path, cs):
    lv = truth_levels()
    p = tmp_path / "m.mrk.json"
    p.write_text(json.dumps(L.to_markups_dict(lv, cs)))
    if cs == "RAS":  # really stored flipped
        pos = json.loads(p.read_text())["markups"][0]["controlPoints"][0]["position"]
        np.testing.assert_allclose(pos, lv["T12"].centroid * [-1, -1, 1])
    back = L.from_markups(p)
    assert_same_levels(back, lv)
    assert back.issues == []


def test_markups_centres_only_get_estimated_corners(tmp_path, phantom):
    scan, lv = phantom
    p = tmp_path / "c.mrk.json"
    p.write_text(json.dumps(L.to_markups_dict(lv, "RAS", corners=False)))
    back = L.from_markups(p)
    assert all(back[n].corners is None for n in back.names)
    est = L.estimate_corners(back, scan.affine[:3, 2])
    for n in LEVEL_NAMES:
        c = est[n].corners
        width = 0.5 * (np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3]))
        # centre spacing 35 mm -> width 1.05 x 35; orientation follows the spine axis
        assert width == pytest.approx(L.EST_WIDTH_FACTOR * 35.0, rel=0.02)
        assert np.linalg.norm(c.mean(0) - lv[n].centroid) < 1e-6
        assert c[0][1] < c[1][1] and c[0][2] > c[3][2]  # AS anterior of PS, above AI
    assert any("estimated" in s for s in est.issues)


def test_markups_unknown_label_is_an_error(tmp_path):
    doc = L.to_markups_dict(truth_levels())
    doc["markups"][0]["controlPoints"][3]["label"] = "T11"
    p = tmp_path / "u.mrk.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(LevelsError, match="unknown control point label 'T11'") as e:
        L.from_markups(p)
    assert str(p) in str(e.value)


def test_markups_duplicate_and_missing_levels_are_flagged(tmp_path):
    lv = truth_levels()
    doc = L.to_markups_dict(lv, corners=False)
    cps = doc["markups"][0]["controlPoints"]
    cps[:] = [c for c in cps if c["label"] != "S1"]  # field of view cut at S1
    cps.append(dict(cps[2], id="99"))  # L2 twice
    p = tmp_path / "d.mrk.json"
    p.write_text(json.dumps(doc))
    back = L.from_markups(p)
    assert back.names == ["T12", "L1", "L3", "L4", "L5"]
    assert "L2: duplicate label in markups; skipped" in back.issues
    assert "S1: not in markups" in back.issues


def test_label_parsing():
    assert L.parse_point_label("L4") == ("L4", None)
    assert L.parse_point_label("l4-as") == ("L4", 0)
    assert L.parse_point_label("S1 posterior-inferior") == ("S1", 2)
    assert L.parse_point_label("T12_AI") == ("T12", 3)
    assert L.parse_point_label("L4-L5") is None
    assert L.parse_point_label("L6") is None


def test_order_corners_from_any_order():
    lv = truth_levels(tilt_deg=20)
    c = lv["L3"].corners
    for perm in ([2, 0, 3, 1], [3, 2, 1, 0], [1, 3, 0, 2]):
        np.testing.assert_allclose(L.order_corners(c[perm]), c)


def test_labelmap_levels_match_truth(tmp_path, phantom):
    scan, lv = phantom
    lab = render_labels(scan.affine, scan.shape, lv)
    p = write_image(tmp_path / "lab.nii.gz", lab, scan.affine)
    got = L.from_labelmap(p, scan, L.resolve_label_mapping("synthetic"))
    assert got.names == list(LEVEL_NAMES)
    px = scan.spacing[0]
    for n in LEVEL_NAMES:
        # centroids: voxelisation error only (< 1 voxel); corners within 1.5 voxels
        assert np.linalg.norm(got[n].centroid - lv[n].centroid) < px
        assert np.max(np.linalg.norm(got[n].corners - lv[n].corners, axis=1)) < 1.5 * px
        assert got[n].mid_slice == int(round(scan.lps_to_index(lv[n].centroid)[2]))


def test_labelmap_spider_preset_has_no_sacrum(phantom):
    scan, lv = phantom
    lab = Scan(render_labels(scan.affine, scan.shape, lv).astype(np.float32), scan.affine)
    got = L.from_labelmap(lab, scan, L.resolve_label_mapping("spider"), where="x.mha")
    assert got.names == ["T12", "L1", "L2", "L3", "L4", "L5"]
    assert any(s.startswith("S1:") for s in got.issues)


def test_labelmap_user_mapping_files(tmp_path, phantom):
    scan, lv = phantom
    values = {n: 10 + i for i, n in enumerate(LEVEL_NAMES)}
    lab = Scan(render_labels(scan.affine, scan.shape, lv, values=values).astype(np.float32), scan.affine)
    (tmp_path / "m.json").write_text(json.dumps(values))
    (tmp_path / "m.csv").write_text("label,level\n" + "\n".join(f"{v},{k}" for k, v in values.items()))
    for f in ("m.json", "m.csv"):
        got = L.from_labelmap(lab, scan, L.resolve_label_mapping(str(tmp_path / f)), where="lab")
        assert got.names == list(LEVEL_NAMES)
    (tmp_path / "bad.json").write_text(json.dumps({"L7": 3}))
    with pytest.raises(LevelsError, match="unknown level"):
        L.load_label_mapping(tmp_path / "bad.json")
    with pytest.raises(ConfigError):
        L.resolve_label_mapping("nonexistent-preset")


def test_labelmap_wrong_shape(tmp_path, phantom):
    scan, lv = phantom
    lab = render_labels(scan.affine, scan.shape, lv)[:, :200]
    p = write_image(tmp_path / "short.nii.gz", lab, scan.affine)
    with pytest.raises(LevelsError, match="shape") as e:
        L.from_labelmap(p, scan, SYNTH_LABELS and L.resolve_label_mapping("synthetic"))
    assert "short.nii.gz" in str(e.value)


def test_labelmap_wrong_geometry(tmp_path, phantom):
    scan, lv = phantom
    aff = scan.affine.copy()
    aff[:3, 3] += [0, 5.0, 0]  # shifted 5 mm
    p = write_image(tmp_path / "shift.nrrd", render_labels(scan.affine, scan.shape, lv), aff)
    with pytest.raises(LevelsError, match="geometry"):
        L.from_labelmap(p, scan, L.resolve_label_mapping("synthetic"))


def test_labelmap_on_a_flipped_copy_of_the_grid_is_accepted(phantom):
    scan, lv = phantom
    from extract_phantom import relabel_affine

    lab = render_labels(scan.affine, scan.shape, lv).astype(np.float32)
    aff2, apply = relabel_affine(scan.affine, scan.shape, flip_k=True, transpose_ij=True)
    direct = L.from_labelmap(Scan(lab, scan.affine), scan, L.resolve_label_mapping("synthetic"), where="a")
    flipped = L.from_labelmap(Scan(apply(lab), aff2), scan, L.resolve_label_mapping("synthetic"), where="b")
    assert_same_levels(direct, flipped, 1e-9)
    shifted = scan.affine.copy()
    shifted[:3, 3] += scan.affine[:3, 1]  # one whole row off
    with pytest.raises(LevelsError, match="geometry"):
        L.from_labelmap(Scan(lab, shifted), scan, L.resolve_label_mapping("synthetic"), where="c")


def test_spinenet_adapter(tmp_path, phantom):
    scan, lv = phantom
    extra = [{"predicted_label": "T11", "average_polygon": [[1, 1], [2, 1], [2, 2], [1, 2]], "slice_nos": [6]}]
    p = tmp_path / "sn.json"
    p.write_text(json.dumps(spinenet_dicts(scan, lv, extra)))
    got = L.load_spinenet_json(p, scan)
    assert_same_levels(got, lv, 1e-6)
    assert got["L3"].slice_range == (5, 9)


def test_spinenet_duplicates_flagged(phantom):
    scan, lv = phantom
    vd = spinenet_dicts(scan, lv)
    vd.append(dict(vd[4]))  # L4 detected twice
    got = L.from_spinenet(vd, scan)
    assert "L4" not in got and "L4: detected 2 times; skipped" in got.issues
    with pytest.raises(LevelsError, match="malformed"):
        L.from_spinenet([{"predicted_label": "L1"}], scan)


def test_out_of_volume_levels_dropped_and_flagged(phantom):
    scan, lv = phantom
    moved = lv.levels | {"S1": L.Level("S1", lv["S1"].centroid + [0, 0, -200.0], lv["S1"].corners + [0, 0, -200.0])}
    got = L.check_in_volume(L.LevelSet(moved), scan)
    assert "S1" not in got and "S1: outside the image volume" in got.issues
    assert got.names == list(LEVEL_NAMES[:-1])
