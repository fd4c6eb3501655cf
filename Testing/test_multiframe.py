"""Multi-frame DICOM (issue #15 part 3): Legacy Converted Enhanced MR copies (highdicom's legacy
converter) and Enhanced MR copies of single-frame series are read, indexed and extracted exactly
like the originals, for three series shapes (the synthetic cohort's, a reversed-slice-order
phantom, a doubly oblique phantom); several stacks in one file (orientations, echoes); bad
multi-frame input gives one line naming the file."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from extract_phantom import phantom_scan, relabel_affine, sagittal_affine, truth_levels
from multiframe_helpers import as_enhanced_mr, edit, legacy_convert, read_series

from SpineSSLLib.cli import main as cli
from SpineSSLLib.errors import DicomError, GeometryError
from SpineSSLLib.extract import load_volumes
from SpineSSLLib.io import read_dicom_series, read_header, read_scan
from SpineSSLLib.synth.dicom import write_series

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CENTRE_VB = np.array([111.5, 111.5, 4.0, 1.0])
CENTRE_IVD = np.array([111.5, 55.5, 4.0, 1.0])


def header(n: int, **kw) -> dict:
    """Header of test subject ``n`` (holds what highdicom's converter copies)."""
    return {"PatientID": f"MF{n:03d}", "PatientName": f"DOE^MF{n}", "PatientBirthDate": "19600101",
            "PatientSex": "F", "StudyDate": "20200101", "StudyTime": "120000", "ReferringPhysicianName": "",
            "AccessionNumber": "", "StudyID": "1", "SeriesNumber": 3, "Manufacturer": "SpineSSL test",
            "SeriesDescription": "SAG T2 TSE", "EchoTime": "100", "MagneticFieldStrength": "1.5", **kw}


def centred_affine(shape, spacing, rot_z_deg=0.0, rot_y_deg=0.0):
    """A sagittal affine whose slab is centred on x = 0, rotated about its centre by ``rot_z_deg``
    (about superior-inferior) and ``rot_y_deg`` (about anterior-posterior)."""
    K, J, I = shape
    a = sagittal_affine(shape, spacing, origin=((K - 1) / 2 * spacing[2], -60.0, 100.0))
    mid = np.array([(I - 1) / 2, (J - 1) / 2, (K - 1) / 2])
    centre = a[:3, :3] @ mid + a[:3, 3]
    tz, ty = np.radians(rot_z_deg), np.radians(rot_y_deg)
    rz = np.array([[np.cos(tz), -np.sin(tz), 0], [np.sin(tz), np.cos(tz), 0], [0, 0, 1]])
    ry = np.array([[np.cos(ty), 0, np.sin(ty)], [0, 1, 0], [-np.sin(ty), 0, np.cos(ty)]])
    b = a.copy()
    b[:3, :3] = rz @ ry @ a[:3, :3]
    b[:3, 3] = centre - b[:3, :3] @ mid
    return b


def phantom_series(folder, n: int, shape, spacing, oblique=(0.0, 0.0), flip_k=False):
    aff = centred_affine(shape, spacing, *oblique)
    if flip_k:
        aff, _ = relabel_affine(aff, shape, flip_k=True)
    scan, _ = phantom_scan(shape=shape, affine=aff)
    return write_series(folder, scan.array, aff, header(n), series_uid=f"1.2.826.0.1.3680043.10.998.{n}",
                        study_uid=f"1.2.826.0.1.3680043.10.998.{n}.0")


def levels_doc(lv) -> dict:
    return {"schema": "spinessl.levels/1", **lv.to_dict()}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Three single-frame series (SF/<name>/) and their multi-frame copies (MF/<name>.dcm), with
    level files keyed by SeriesInstanceUID."""
    from SpineSSLLib import levels as L
    from SpineSSLLib.synth import generate_cohort
    from SpineSSLLib.synth.config import preset

    base = tmp_path_factory.mktemp("mf")
    syn = base / "syn"
    generate_cohort(syn, preset("tiny", subjects=1, followup_fraction=0.0, twin_fraction=0.0))
    sf, mf, lev = base / "SF", base / "MF", base / "levels"
    lev.mkdir()
    series = {}
    (truth,) = sorted((syn / "truth").glob("*.json"))
    doc = json.loads(truth.read_text())
    shutil.copytree(syn / doc["dicom_dir"], sf / "synthetic")
    (lev / f"{doc['series_instance_uid']}.json").write_text(json.dumps(levels_doc(L.from_truth_json(truth))))
    series["synthetic"] = sorted((sf / "synthetic").iterdir())
    series["reversed"] = phantom_series(sf / "reversed", 1, (13, 256, 112), (1.2, 1.2, 4.0), flip_k=True)
    series["oblique"] = phantom_series(sf / "oblique", 2, (15, 256, 192), (1.1, 1.1, 3.6), oblique=(18.0, 3.0))
    for n, name in ((1, "reversed"), (2, "oblique")):
        (lev / f"1.2.826.0.1.3680043.10.998.{n}.json").write_text(json.dumps(levels_doc(truth_levels())))
    files = {}
    for name, fs in series.items():
        files[name] = legacy_convert(read_series(fs), mf / f"{name}.dcm")
    return {"sf": sf, "mf": mf, "levels": lev, "files": files, "base": base}


@pytest.mark.parametrize("name", ["synthetic", "reversed", "oblique"])
def test_multiframe_copy_reads_like_the_single_frame_series(pair, name, tmp_path):
    a = read_dicom_series(pair["sf"] / name)
    b = read_dicom_series([pair["files"][name]])
    h = read_header(pair["files"][name])
    assert len(h.frame_headers) == a.shape[0] and h.frames == a.shape[0]
    assert b.shape == a.shape
    np.testing.assert_array_equal(b.array, a.array)  # pixels and per-frame rescale
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-9)
    assert {k: v for k, v in b.meta.items() if k != "n_files"} == {k: v for k, v in a.meta.items() if k != "n_files"}
    assert b.meta["n_files"] == 1
    if name == "oblique":
        assert 15 < a.meta["obliquity_deg"] < 30
    # a multi-frame file is a whole series: `grade SCAN` / read_scan take the file itself
    np.testing.assert_array_equal(read_scan(pair["files"][name]).array, a.array)
    # the Enhanced MR flavour (echo time in the MR Echo functional group) reads the same
    enh = as_enhanced_mr(pair["files"][name], tmp_path / "enh.dcm")
    c = read_dicom_series([enh])
    np.testing.assert_array_equal(c.array, a.array)
    np.testing.assert_allclose(c.affine, a.affine, atol=1e-9)
    assert c.meta["echo_time_ms"] == a.meta["echo_time_ms"]


def _csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_index_and_extraction_of_the_multiframe_copies_equal_the_originals(pair):
    base = pair["base"]
    c_sf, c_mf = base / "C_sf", base / "C_mf"
    assert cli(["-q", "index", str(pair["sf"]), "--out", str(c_sf)]) == 0
    c_mf.mkdir()
    shutil.copy(c_sf / "cohort_salt.txt", c_mf / "cohort_salt.txt")  # same salt -> same keys
    assert cli(["-q", "index", str(pair["mf"]), "--out", str(c_mf)]) == 0
    rows_sf, rows_mf = _csv(c_sf / "series.csv"), _csv(c_mf / "series.csv")
    assert len(rows_sf) == 3 and all(r["status"] == "selected" for r in rows_sf)
    for r in rows_sf + rows_mf:
        r["n_files"] = int(r["n_files"])
    assert [r["n_files"] for r in rows_mf] == [1, 1, 1]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "n_files"} for r in rows]  # noqa: E731
    assert strip(rows_mf) == strip(rows_sf)
    assert _csv(c_mf / "errors.csv") == []
    for c in (c_sf, c_mf):
        assert cli(["-q", "extract", str(c), "--levels", f"levels:{pair['levels']}"]) == 0
    assert _csv(c_mf / "volumes.csv") == _csv(c_sf / "volumes.csv")
    for r in rows_sf:
        a = load_volumes(c_sf / "volumes" / f"{r['scan_key']}.npz")
        b = load_volumes(c_mf / "volumes" / f"{r['scan_key']}.npz")
        assert a.vb_present.sum() >= 6 and a.ivd_present.sum() >= 5
        np.testing.assert_array_equal(b.vb_present, a.vb_present)
        np.testing.assert_array_equal(b.vb, a.vb)  # identical volumes
        np.testing.assert_array_equal(b.ivd, a.ivd)
        for aff_a, aff_b, centre in ((a.vb_affine, b.vb_affine, CENTRE_VB), (a.ivd_affine, b.ivd_affine, CENTRE_IVD)):
            assert np.abs(aff_a[:, :3] @ centre - aff_b[:, :3] @ centre).max() <= 1e-3  # centres, mm


def _stack(folder, n, affine, shape, echo, scale, series_uid):
    scan, _ = phantom_scan(shape=shape, affine=affine)
    return write_series(folder, scan.array * scale, affine, header(n, EchoTime=echo), series_uid=series_uid,
                        study_uid=series_uid + ".0")


def test_several_stacks_in_one_file_the_sagittal_t2_stack_is_indexed_and_extracted(tmp_path):
    """One file, three stacks: sagittal TE 100 ms, sagittal TE 20 ms (same positions, other
    contrast), axial.  The sagittal long-TE stack is selected and extracted like its own
    single-frame series; the others are listed with their reason."""
    from pydicom.uid import generate_uid

    uid = "1.2.826.0.1.3680043.10.998.77"
    shape = (13, 160, 160)
    sag = centred_affine(shape, (1.6, 1.6, 4.0))
    ax = np.eye(4)
    ax[:3, 0], ax[:3, 1], ax[:3, 2], ax[:3, 3] = [1.6, 0, 0], [0, 1.6, 0], [0, 0, -5.0], [-128, -100, 40]
    t2 = _stack(tmp_path / "sf" / "t2", 7, sag, shape, "100", 1.0, uid)
    pd = _stack(tmp_path / "pd", 7, sag, shape, "20", 0.5, uid)
    axial = _stack(tmp_path / "ax", 7, ax, (6, 160, 160), "100", 1.0, uid)
    dss = read_series(t2)
    for fs in (pd, axial):
        for ds in read_series(fs):  # other instances of the same series
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            dss.append(ds)
    legacy_convert(dss[13:26] + dss[:13] + dss[26:], tmp_path / "mf" / "three.dcm")  # PD frames first
    labels = [f.stack for f in read_header(tmp_path / "mf" / "three.dcm").frame_headers]
    # three stacks of 13, 13 and 6 frames (the frame order in the file is the converter's:
    # highdicom 0.27 keeps the input order, 0.28 sorts by position and interleaves the echoes)
    assert sorted(Counter(labels).values()) == [6, 13, 13]
    scan = read_dicom_series([tmp_path / "mf" / "three.dcm"])
    t2_scan = read_dicom_series(tmp_path / "sf" / "t2")
    np.testing.assert_array_equal(scan.array, t2_scan.array)
    # Enhanced MR flavour: the two echoes told apart by their per-frame MR Echo groups
    enh = read_dicom_series([as_enhanced_mr(tmp_path / "mf" / "three.dcm", tmp_path / "enh" / "three.dcm")])
    np.testing.assert_array_equal(enh.array, t2_scan.array)

    lev = tmp_path / "levels"
    lev.mkdir()
    (lev / f"{uid}.json").write_text(json.dumps(levels_doc(truth_levels())))
    c_sf, c_mf = tmp_path / "C_sf", tmp_path / "C_mf"
    assert cli(["-q", "index", str(tmp_path / "sf"), "--out", str(c_sf)]) == 0
    c_mf.mkdir()
    shutil.copy(c_sf / "cohort_salt.txt", c_mf / "cohort_salt.txt")
    assert cli(["-q", "index", str(tmp_path / "mf"), "--out", str(c_mf)]) == 0
    rows = _csv(c_mf / "series.csv")
    assert sorted((r["status"], r["orientation"], r["echo_time_ms"]) for r in rows) == [
        ("rejected", "axial", "100"), ("rejected", "sagittal", "20"), ("selected", "sagittal", "100")]
    by = {(r["orientation"], r["echo_time_ms"]): r for r in rows}
    assert by[("sagittal", "20")]["reason"] == ("stack 1 of a multi-frame series: stack 2 is the one read "
                                                "(sagittal, most frames)")
    assert by[("axial", "100")]["reason"] == "not sagittal (axial slices)"
    assert len({r["scan_key"] for r in rows}) == 3
    for c in (c_sf, c_mf):
        assert cli(["-q", "extract", str(c), "--levels", f"levels:{lev}"]) == 0
    a, b = _csv(c_sf / "volumes.csv"), _csv(c_mf / "volumes.csv")
    assert len(a) == len(b) > 0
    va = load_volumes(c_sf / a[0]["file"])
    vb = load_volumes(c_mf / b[0]["file"])
    np.testing.assert_array_equal(vb.vb, va.vb)
    np.testing.assert_array_equal(vb.ivd, va.ivd)


def test_stack_ids_split_frames_of_one_orientation(tmp_path):
    """Two sagittal stacks told apart only by their StackID (e.g. upper and lower spine): the
    one with more frames is read."""
    from pydicom.uid import generate_uid

    uid = "1.2.826.0.1.3680043.10.998.78"
    shape = (9, 96, 96)
    a1 = centred_affine(shape, (1.5, 1.5, 4.0))
    a2 = a1.copy()
    a2[:3, 3] += [1.0, 0, 0]  # interleaved positions: only the StackID separates the stacks
    s1 = _stack(tmp_path / "s1", 8, a1, shape, "100", 1.0, uid)
    s2 = _stack(tmp_path / "s2", 8, a2, (7, 96, 96), "100", 1.0, uid)
    dss, ids = read_series(s1), {}
    for ds in dss:
        ids[str(ds.SOPInstanceUID)] = "1"
    for ds in read_series(s2):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ids[str(ds.SOPInstanceUID)] = "2"
        dss.append(ds)
    p = legacy_convert(dss, tmp_path / "two.dcm", stack_ids=ids)
    h = read_header(p)
    assert sorted({f.stack for f in h.frame_headers}) == ["1", "2"]
    scan = read_dicom_series([p])
    assert scan.shape[0] == 9
    np.testing.assert_array_equal(scan.array, read_dicom_series(tmp_path / "s1").array)


# --------------------------------------------------------------------------------------------
# bad multi-frame input: one line naming the file
# --------------------------------------------------------------------------------------------

def _drop_position(ds):
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence


def _drop_item(ds):
    del ds.PerFrameFunctionalGroupsSequence[-1]


def _same_position(ds):
    pf = ds.PerFrameFunctionalGroupsSequence
    pf[1].PlanePositionSequence[0].ImagePositionPatient = pf[0].PlanePositionSequence[0].ImagePositionPatient


def _moved_frame(ds):
    p = ds.PerFrameFunctionalGroupsSequence[4].PlanePositionSequence[0]
    p.ImagePositionPatient = [float(p.ImagePositionPatient[0]) + 1.5] + [float(v) for v in p.ImagePositionPatient[1:]]


def _pixel_spacing(ds):
    shared = ds.SharedFunctionalGroupsSequence[0]
    pm = shared.PixelMeasuresSequence[0]
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.PixelMeasuresSequence = [pm]
    del shared.PixelMeasuresSequence
    import copy

    odd = copy.deepcopy(pm)
    odd.PixelSpacing = [1.3, 1.3]
    ds.PerFrameFunctionalGroupsSequence[3].PixelMeasuresSequence = [odd]


def _no_functional_groups(ds):
    del ds.PerFrameFunctionalGroupsSequence
    del ds.SharedFunctionalGroupsSequence


@pytest.mark.parametrize("fn, exc, cause", [
    (_drop_position, DicomError, "multi-frame image: frame 3 of 13 has no valid ImagePositionPatient "
                                 "(PlanePositionSequence in the per-frame or shared functional groups)"),
    (_drop_item, DicomError, "PerFrameFunctionalGroupsSequence has 12 items for 13 frames"),
    (_no_functional_groups, DicomError, "multi-frame image (13 frames) without per-frame geometry "
                                        "(no PerFrameFunctionalGroupsSequence)"),
    (_same_position, DicomError, "multi-frame image: frames 1 and 2 lie at the same position (dynamic, "
                                 "diffusion or repeated acquisitions are not supported)"),
    (_moved_frame, GeometryError, "inconsistent slice spacing"),
    (_pixel_spacing, GeometryError, "inconsistent PixelSpacing within the series"),
], ids=["no-position", "missing-item", "no-functional-groups", "same-position", "irregular-frame",
        "pixel-spacing"])
def test_bad_multiframe_input_is_one_line_naming_the_file(pair, tmp_path, capsys, fn, exc, cause):
    bad = edit(pair["files"]["reversed"], tmp_path / "in" / "bad.dcm", fn)
    with pytest.raises(exc) as e:
        read_dicom_series([bad])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{bad}: ") and cause in msg
    # a batch (index) lists the file with the cause and carries on with the good series
    shutil.copy(pair["files"]["oblique"], tmp_path / "in" / "good.dcm")
    assert cli(["-q", "index", str(tmp_path / "in"), "--out", str(tmp_path / "C")]) == 1  # 1: errors listed
    errs = _csv(tmp_path / "C" / "errors.csv")
    assert [(r["file"], r["error_type"]) for r in errs] == [("bad.dcm", exc.__name__)]
    assert cause in errs[0]["message"]
    assert sum(r["status"] == "selected" for r in _csv(tmp_path / "C" / "series.csv")) == 1


def test_an_exact_copy_of_a_multiframe_file_is_read_once(pair, tmp_path):
    src = pair["files"]["reversed"]
    (tmp_path / "s").mkdir()
    shutil.copy(src, tmp_path / "s" / "IM.dcm")
    shutil.copy(src, tmp_path / "s" / "IM (1).dcm")
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "s").array, read_dicom_series([src]).array)

    def other_pixels(ds):
        px = ds.pixel_array.copy()
        px[0, 0, 0] += 1
        ds.PixelData = px.tobytes()

    edit(src, tmp_path / "s" / "IM (1).dcm", other_pixels)
    with pytest.raises(DicomError, match="two files with the same SOPInstanceUID hold different pixel data"):
        read_dicom_series(tmp_path / "s")
