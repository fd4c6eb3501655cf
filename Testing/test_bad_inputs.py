"""The bad-input catalogue (issue #9; table in docs/bad-inputs.md): one test per bad input, each
through the public entry point a user meets (``spine-ssl`` CLI or the SpineSSLLib / scene
function the Slicer module calls), inputs written on the fly.

Every test checks what the user sees: the exception type (a ``SpineSSLError`` subclass), a
message on ONE line naming the offending file and the cause; for batch commands that the good
scans still produce their outputs and the bad one is listed with its cause in the errors table;
and, where outputs already existed, that they are byte-identical afterwards.  The 16-bit and
rescale cases check the values read against the values written.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core (pyproject [test]): real MRML classes, no application
from extract_phantom import phantom_scan, render_labels, sagittal_affine, write_image

from SpineSSLLib import errors as E
from SpineSSLLib.cli import main as cli
from SpineSSLLib.errors import (CheckpointError, ConfigError, DicomError, InputError, LevelsError, ManifestError,
                                SpineSSLError)
from SpineSSLLib.synth.dicom import write_series

SMALL = (6, 24, 20)  # (K, J, I) of the tiny header-only series


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def hdr(n: int, desc: str = "SAG T2 TSE") -> dict:
    return {"PatientID": f"PAT{n:03d}", "PatientName": f"DOE^P{n:03d}", "StudyDate": f"20{10 + n:02d}0101",
            "SeriesDescription": desc, "EchoTime": "100", "MagneticFieldStrength": "1.5"}


def vol(seed: int, shape=SMALL) -> np.ndarray:
    return np.random.default_rng(seed).uniform(10, 900, shape).round().astype(np.float32)


def uid(n: int) -> str:
    return f"1.2.826.0.1.3680043.10.999.{n}"


def small_series(folder, n: int, affine=None, shape=SMALL, **kw):
    """A tiny sagittal T2 series of subject ``n`` (enough for header/geometry checks)."""
    aff = sagittal_affine(shape, (1.0, 1.0, 4.0)) if affine is None else affine
    return write_series(folder, vol(n, shape), aff, hdr(n), series_uid=kw.pop("series_uid", uid(n)),
                        study_uid=kw.pop("study_uid", uid(n) + ".0"), **kw)


def rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def one_line(text: str, *needles) -> str:
    """``text`` is a single line holding every needle (file path, cause)."""
    text = text.strip()
    assert text and "\n" not in text, text
    for s in needles:
        assert str(s) in text, (s, text)
    print(f"CATALOGUE {os.environ.get('PYTEST_CURRENT_TEST', '').split(' ')[0]} | {text}")  # for docs (-s)
    return text


def cli_error(capsys, exc_type, argv, *needles) -> str:
    """Run the CLI expecting exit 2 (bad input): the user's line is ONE line naming file and cause,
    and (from the ``--debug`` traceback) the exception is exactly ``exc_type``."""
    capsys.readouterr()
    rc = cli(["--debug", "-q", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    last = err.strip().splitlines()[-1]  # what the user sees without --debug
    prefix = f"spine-ssl {argv[0]}: error: "
    assert last.startswith(prefix), last
    one_line(last, *needles)
    assert f"{exc_type.__module__}.{exc_type.__qualname__}: {last[len(prefix):]}" in err, err[-2000:]
    return last


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def index(root, out) -> int:
    return cli(["-q", "index", str(root), "--out", str(out)])


def is_error_type(name: str) -> bool:
    """An errors-table type name is one of the SpineSSLError classes."""
    return isinstance(getattr(E, name, None), type) and issubclass(getattr(E, name), SpineSSLError)


def index_error(out) -> dict:
    errs = [r for r in rows(out / "errors.csv") if r["stage"] == "index"]
    assert len(errs) == 1 and is_error_type(errs[0]["error_type"]), errs
    return errs[0]


def selected(out) -> list[dict]:
    return [r for r in rows(out / "series.csv") if r["status"] == "selected"]


# --------------------------------------------------------------------------------------------
# index: one bad series beside a good one; the good one is still selected
# --------------------------------------------------------------------------------------------

def test_index_truncated_pixel_data(tmp_path):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    bad = small_series(root / "bad", 2)
    bad[-1].write_bytes(bad[-1].read_bytes()[:-50])  # the edge slice: the rest stays regular
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "DicomError" and e["file"] == os.path.join("bad", bad[-1].name)
    one_line(e["message"], "truncated DICOM (pixel data needs")
    assert len(selected(tmp_path / "C")) == 2  # the good series, and the bad one's 5 readable slices


def test_index_corrupt_header(tmp_path):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    bad = small_series(root / "bad", 2)
    bad[0].write_bytes(bad[0].read_bytes()[:300])  # preamble + a few elements
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "DicomError" and e["file"] == os.path.join("bad", bad[0].name)
    one_line(e["message"], "truncated or incomplete DICOM")


def test_index_missing_pixel_data(tmp_path):
    import pydicom

    root = tmp_path / "in"
    small_series(root / "good", 1)
    bad = small_series(root / "bad", 2)
    ds = pydicom.dcmread(bad[-1])
    del ds.PixelData
    ds.save_as(bad[-1])
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "DicomError" and e["file"] == os.path.join("bad", bad[-1].name)
    one_line(e["message"], "missing pixel data")


def test_index_mixed_series_under_one_uid(tmp_path):
    """Two acquisitions (different matrix) share a SeriesInstanceUID: the series is refused."""
    root = tmp_path / "in"
    small_series(root / "good", 1)
    small_series(root / "bad", 2)
    small_series(root / "bad", 2, shape=(6, 30, 20), series_uid=uid(2), file_names=[f"x{k}" for k in range(6)])
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "DicomError" and e["file"].startswith("bad" + os.sep)
    one_line(e["message"], "mixed series: matrix")
    assert [r["status"] for r in rows(tmp_path / "C" / "series.csv")].count("rejected") == 1
    assert len(selected(tmp_path / "C")) == 1


def test_index_duplicate_sop_instance_conflicting(tmp_path):
    """Two different instances at the same slice position (a re-export merged into the folder)."""
    root = tmp_path / "in"
    small_series(root / "good", 1)
    small_series(root / "bad", 2)
    aff = sagittal_affine(SMALL, (1.0, 1.0, 4.0))
    aff[:3, 3] += 2 * aff[:3, 2]  # two other instances at the positions of slices 3 and 4
    write_series(root / "bad", vol(3)[:2], aff, hdr(2), series_uid=uid(2), study_uid=uid(2) + ".0",
                 file_names=["re1", "re2"])
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "DicomError" and e["file"] == "bad"
    one_line(e["message"], "two slices at the same position")
    assert len(selected(tmp_path / "C")) == 1


def test_index_duplicate_sop_instance_copy_is_ignored(tmp_path):
    """An exact copy of an instance (same SOPInstanceUID) is harmless: read once, values exact."""
    from SpineSSLLib.io import read_scan

    root = tmp_path / "in"
    paths = small_series(root / "s", 1)
    shutil.copy(paths[3], root / "s" / "IM0004 (1).dcm")
    assert index(root, tmp_path / "C") == 0
    (row,) = selected(tmp_path / "C")
    assert row["slices"] == "6"
    np.testing.assert_array_equal(read_scan(root / "s").array, vol(1))


def test_index_duplicate_sop_instance_with_other_pixels(tmp_path):
    """A second file claims to be the same instance (same SOPInstanceUID) but holds other pixels."""
    import pydicom

    root = tmp_path / "in"
    small_series(root / "good", 1)
    paths = small_series(root / "bad", 2)
    ds = pydicom.dcmread(paths[3])
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    ds.save_as(root / "bad" / "IM0004 (1).dcm")
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "DicomError" and e["file"] == "bad"
    one_line(e["message"], "two files with the same SOPInstanceUID hold different pixel data "
                           "(IM0004 (1).dcm, IM0004.dcm)")
    assert len(selected(tmp_path / "C")) == 1


def test_index_non_sagittal_series_rejected_with_reason(tmp_path):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    small_series(root / "axial", 2, affine=np.diag([0.8, 0.8, 5.0, 1.0]))
    assert index(root, tmp_path / "C") == 0  # a valid series, just not a usable one
    series = rows(tmp_path / "C" / "series.csv")
    ax = next(r for r in series if r["orientation"] == "axial")
    assert ax["status"] == "rejected" and ax["reason"] == "not sagittal (axial slices)"
    assert len(selected(tmp_path / "C")) == 1


def test_index_single_slice(tmp_path):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    small_series(root / "one", 2, shape=(1, 24, 20))
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "GeometryError" and e["file"] == "one"
    one_line(e["message"], "single-slice series")


def test_index_inconsistent_slice_spacing(tmp_path):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    aff = sagittal_affine(SMALL, (1.0, 1.0, 4.0))
    write_series(root / "gap", vol(2)[:3], aff, hdr(2), series_uid=uid(2), study_uid=uid(2) + ".0")
    aff2 = aff.copy()
    aff2[:3, 3] += aff[:3, 2] * 3.5
    write_series(root / "gap", vol(2)[3:], aff2, hdr(2), series_uid=uid(2), study_uid=uid(2) + ".0",
                 file_names=["y0", "y1", "y2"])
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "GeometryError" and e["file"] == "gap"
    one_line(e["message"], "inconsistent slice spacing (gaps 4.00..6.00 mm)")


@pytest.mark.parametrize("spacing, cause", [((40.0, 40.0, 4.0), "implausible pixel spacing 40x40 mm"),
                                            ((1.0, 1.0, 0.02), "implausible slice spacing 0.02 mm")],
                         ids=["huge-pixel-spacing", "tiny-slice-spacing"])
def test_index_implausible_spacing(tmp_path, spacing, cause):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    small_series(root / "odd", 2, affine=sagittal_affine(SMALL, spacing))
    assert index(root, tmp_path / "C") == 1
    e = index_error(tmp_path / "C")
    assert e["error_type"] == "GeometryError" and e["file"] == "odd"
    one_line(e["message"], cause)
    assert len(selected(tmp_path / "C")) == 1


def test_index_config_typo_leaves_the_previous_index_untouched(tmp_path, capsys):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    out = tmp_path / "C"
    assert index(root, out) == 0
    before = snapshot(out)
    conf = tmp_path / "rules.json"
    conf.write_text(json.dumps({"t2_patern": "t2"}))
    cli_error(capsys, ConfigError, ["index", str(root), "--out", str(out), "--config", str(conf)],
              conf, "unknown key(s) ['t2_patern']")
    assert snapshot(out) == before


def test_index_damaged_salt_file(tmp_path, capsys):
    root = tmp_path / "in"
    small_series(root / "good", 1)
    out = tmp_path / "C"
    assert index(root, out) == 0
    (out / "cohort_salt.txt").write_text("x\n")  # edited by hand
    before = snapshot(out)
    cli_error(capsys, ManifestError, ["index", str(root), "--out", str(out)], out / "cohort_salt.txt", "salt file is damaged")
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------
# pixel values: 16-bit signed / unsigned, rescale slope and intercept (values vs ground truth)
# --------------------------------------------------------------------------------------------

def test_pixels_16bit_signed(tmp_path):
    from SpineSSLLib.io import read_scan

    truth = vol(1) - 450.0
    truth[0, 0, :3] = [-32768, 32767, -1]
    paths = write_series(tmp_path / "s", truth, sagittal_affine(SMALL), hdr(1))
    import pydicom

    assert pydicom.dcmread(paths[0]).PixelRepresentation == 1
    np.testing.assert_array_equal(read_scan(tmp_path / "s").array, truth)


def test_pixels_16bit_unsigned_above_32767(tmp_path):
    from SpineSSLLib.io import read_scan

    truth = vol(1) * 70.0  # up to 63000: wrong if read as signed
    truth[0, 0, :2] = [65535, 0]
    paths = write_series(tmp_path / "s", truth, sagittal_affine(SMALL), hdr(1))
    import pydicom

    assert pydicom.dcmread(paths[0]).PixelRepresentation == 0
    np.testing.assert_array_equal(read_scan(tmp_path / "s").array, truth)


def test_pixels_rescale_slope_and_intercept(tmp_path):
    import pydicom

    from SpineSSLLib.io import read_scan

    stored = vol(1)
    paths = write_series(tmp_path / "s", stored, sagittal_affine(SMALL), hdr(1))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = "2.5", "-1024"
        ds.save_as(p)
    np.testing.assert_allclose(read_scan(tmp_path / "s").array, stored * 2.5 - 1024, rtol=0, atol=1e-3)


# --------------------------------------------------------------------------------------------
# extract: a phantom with exact levels; one bad scan beside a good one
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom():
    return phantom_scan(shape=(9, 128, 64), spacing=(2.2, 2.2, 4.0))


def write_phantom(root, n: int, phantom, levels_dir=None, levels=None):
    """Phantom series of subject ``n`` (own UIDs) and, when asked, its level file
    ``levels_dir/<SeriesInstanceUID>.json`` (a saved level set)."""
    from SpineSSLLib import atomic

    scan, truth = phantom
    paths = write_series(root / f"s{n}", scan.array, scan.affine, hdr(n), series_uid=uid(n),
                         study_uid=uid(n) + ".0")
    if levels_dir is not None:
        atomic.write_json(levels_dir / f"{uid(n)}.json",
                          {"schema": "spinessl.levels/1", **(levels or truth).to_dict()})
    return paths


def indexed_phantoms(tmp_path, phantom, n=2, levels=True):
    root, lv, out = tmp_path / "in", tmp_path / "levels", tmp_path / "C"
    lv.mkdir()
    paths = [write_phantom(root, i, phantom, lv if levels else None) for i in range(1, n + 1)]
    assert index(root, out) == 0
    return root, lv, out, paths


def scan_key_of(out, paths) -> str:
    """scan_key of the series holding ``paths`` (through the hashed sources, as extract does)."""
    from SpineSSLLib.index import locate_sources

    found = locate_sources(out)
    return next(k for k, fs in found.items() if os.fspath(paths[0]) in fs)


def extract_errors(out) -> list[dict]:
    errs = [r for r in rows(out / "errors.csv") if r["stage"] != "index"]
    assert all(is_error_type(r["error_type"]) for r in errs), errs
    return errs


def assert_one_good_one_bad(out, bad_key):
    scans = {r["scan_key"]: r for r in rows(out / "scans.csv")}
    assert scans[bad_key]["status"] == "failed"
    good = [r for k, r in scans.items() if k != bad_key]
    assert good and all(r["status"] == "ok" and r["n_vb"] == "7" for r in good)
    assert {v["scan_key"] for v in rows(out / "volumes.csv")} == {r["scan_key"] for r in good}


def test_extract_undecodable_transfer_syntax(tmp_path, phantom):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    root, lv, out, paths = indexed_phantoms(tmp_path, phantom)
    for p in paths[1]:  # subject 2 re-encoded as JPEG-LS (no decoder installed)
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(32) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(p)
    rc = cli(["-q", "extract", str(out), "--levels", f"levels:{lv}", "--device", "cpu"])
    assert rc == 1
    (e,) = extract_errors(out)
    assert e["error_type"] == "DicomError" and e["stage"] == "read"
    assert e["file"] == os.path.relpath(paths[1][0], root)
    one_line(e["message"], "cannot decode pixel data", "JPEG-LS Lossless")
    assert_one_good_one_bad(out, scan_key_of(out, paths[1]))


def test_extract_label_map_geometry_does_not_match(tmp_path, phantom):
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom, levels=False)
    scan, truth = phantom
    labels = render_labels(scan.affine, scan.shape, truth)
    write_image(lv / f"{uid(1)}_labels.nii.gz", labels, scan.affine)
    shifted = scan.affine.copy()
    shifted[:3, 3] += [0.0, 1.1, 0.0]  # half a voxel off: another grid
    write_image(lv / f"{uid(2)}_labels.nii.gz", labels, shifted)
    rc = cli(["-q", "extract", str(out), "--levels", f"labels:{lv}", "--label-mapping", "synthetic",
              "--device", "cpu"])
    assert rc == 1
    (e,) = extract_errors(out)
    assert e["error_type"] == "LevelsError" and e["stage"] == "levels"
    one_line(e["message"], f"{uid(2)}_labels.nii.gz", "label map geometry (origin/spacing/direction) does not match")
    assert_one_good_one_bad(out, scan_key_of(out, paths[1]))


def _markups(path, labels_points):
    from SpineSSLLib import atomic

    atomic.write_json(path, {"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
        {"label": lab, "position": [float(v) for v in p], "positionStatus": "defined"} for lab, p in labels_points]}]})


def test_extract_markups_with_unknown_label(tmp_path, phantom):
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom, levels=False)
    _, truth = phantom
    good = [(lev.name, lev.centroid) for lev in truth]
    _markups(lv / f"{uid(1)}.mrk.json", good)
    _markups(lv / f"{uid(2)}.mrk.json", good + [("L6", truth["S1"].centroid - [0, 0, 30])])
    rc = cli(["-q", "extract", str(out), "--levels", f"markups:{lv}", "--device", "cpu"])
    assert rc == 1
    (e,) = extract_errors(out)
    assert e["error_type"] == "LevelsError"
    one_line(e["message"], f"{uid(2)}.mrk.json", "unknown control point label 'L6'")
    assert_one_good_one_bad(out, scan_key_of(out, paths[1]))


def test_extract_markups_with_duplicate_label(tmp_path, phantom):
    """A level placed twice is not guessed: it is skipped and named in scans.csv; the rest is
    extracted."""
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom, n=1, levels=False)
    _, truth = phantom
    pts = [(lev.name, lev.centroid) for lev in truth] + [("L3", truth["L3"].centroid + [0, 0, 5])]
    _markups(lv / f"{uid(1)}.mrk.json", pts)
    assert cli(["-q", "extract", str(out), "--levels", f"markups:{lv}", "--device", "cpu"]) == 0
    (s,) = rows(out / "scans.csv")
    assert s["status"] == "ok" and s["n_vb"] == "6" and s["missing"].split()[0] == "L3"
    assert "L3: duplicate label in markups; skipped" in s["issues"]


def test_extract_missing_level_file(tmp_path, phantom):
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom)
    os.unlink(lv / f"{uid(2)}.json")
    assert cli(["-q", "extract", str(out), "--levels", f"levels:{lv}", "--device", "cpu"]) == 1
    (e,) = extract_errors(out)
    assert e["error_type"] == "LevelsError" and e["stage"] == "levels"
    one_line(e["message"], str(lv), "no levels level file for this scan")
    assert_one_good_one_bad(out, scan_key_of(out, paths[1]))


def test_extract_level_source_typo(tmp_path, phantom, capsys):
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom, n=1)
    before = snapshot(out)
    cli_error(capsys, ConfigError, ["extract", str(out), "--levels", f"level:{lv}"], f"got 'level:{lv}'",
              "--levels must be KIND:FOLDER with KIND one of truth, levels, markups")
    assert snapshot(out) == before


def test_extract_rerun_on_corrupted_source_keeps_earlier_volumes(tmp_path, phantom):
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom)
    assert cli(["-q", "extract", str(out), "--levels", f"levels:{lv}", "--device", "cpu"]) == 0
    before = snapshot(out / "volumes")
    paths[1][4].write_bytes(paths[1][4].read_bytes()[:-100])  # source damaged after extraction
    assert cli(["-q", "extract", str(out), "--levels", f"levels:{lv}", "--device", "cpu", "--overwrite"]) == 1
    (e,) = extract_errors(out)
    assert e["error_type"] == "DicomError" and e["file"] == os.path.relpath(paths[1][4], root)
    one_line(e["message"], "truncated DICOM")
    assert snapshot(out / "volumes") == before  # the earlier volumes of the bad scan are intact
    assert not list((out / "volumes").glob(".*"))  # no temporary files left


def test_extract_grades_table_with_bad_disc_name(tmp_path, phantom, capsys):
    root, lv, out, paths = indexed_phantoms(tmp_path, phantom, n=1)
    assert cli(["-q", "extract", str(out), "--levels", f"levels:{lv}", "--device", "cpu"]) == 0
    before = snapshot(out)
    g = tmp_path / "grades.csv"
    g.write_text(f"series_uid,disc,grade\n{uid(1)},L4-L5,2\n{uid(1)},L6-S1,3\n")
    cli_error(capsys, ManifestError, ["extract", str(out), "--levels", f"levels:{lv}", "--grades", str(g), "--overwrite"],
              g, "grades CSV row needs scan_key/series_uid and a disc")
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------
# NaN/Inf and constant images, oblique series, truncated headers: `spine-ssl detect` over a folder
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detect_run(tmp_path_factory, phantom):
    """`spine-ssl detect` once over a folder holding one good phantom series and one bad input of
    each kind below (each test checks its own row); returns (rc, out, errors rows by scan).  Under
    pytest-xdist the workers share one run (the detector's start-up is the slow part)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    base = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # this session's folder
    top = base / "bad_inputs_detect"
    root, out = top / "in", top / "out"
    with FileLock(str(top) + ".lock"):
        if not (top / "rc").is_file():
            write_phantom(root, 1, phantom)
            for name, value in (("nan_t2", np.nan), ("inf_t2", np.inf)):  # NaN / Inf voxels in a volume file
                arr = vol(5)
                arr[2, 3, 4] = value
                write_image(root / f"{name}.mha", arr, sagittal_affine(SMALL))
            write_series(root / "flat", np.full(SMALL, 7.0), sagittal_affine(SMALL), hdr(2), series_uid=uid(2))
            t = np.radians(40)
            rot = np.eye(4)
            rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
            small_series(root / "oblique", 3, affine=rot @ sagittal_affine(SMALL))
            small_series(root / "tiny", 4)  # 24 x 20 mm
            cut = small_series(root / "cut", 5)
            cut[0].write_bytes(cut[0].read_bytes()[:300])
            for q in cut[1:]:
                q.unlink()
            rc = cli(["-q", "detect", str(root), "--out", str(out), "--device", "cpu", "--threads", "1"])
            (top / "rc").write_text(str(rc))
    return int((top / "rc").read_text()), out, {e["scan"]: e for e in rows(out / "errors.csv")}


def assert_detect_row(detect_run, scan, error, cause):
    rc, out, errs = detect_run
    assert rc == 1 and len(errs) == 6
    assert (out / f"{uid(1)}.json").is_file()  # the good scan was detected
    det = rows(out / "detect.csv")
    assert [r["key"] for r in det] == [uid(1)] and det[0]["n_levels"] != "0"
    e = errs[scan]
    assert e["error"] == error and is_error_type(error), e
    one_line(e["message"], cause)
    return e


@pytest.mark.parametrize("scan", ["nan_t2", "inf_t2"])
def test_detect_nan_or_inf_image(detect_run, scan):
    assert_detect_row(detect_run, scan, "ImageContentError", "image holds NaN or Inf values")


def test_detect_constant_image(detect_run):
    assert_detect_row(detect_run, uid(2), "ImageContentError", "constant image (no contrast)")


def test_detect_field_of_view_too_small(detect_run):
    assert_detect_row(detect_run, uid(4), "GeometryError",
                      "field of view 24 x 20 mm is too small for the detector (at least 64 mm each way)")


def test_detect_oblique_series(detect_run):
    assert_detect_row(detect_run, uid(3), "GeometryError", "oblique sagittal: 40.0 deg from true sagittal (limit 30)")


def test_detect_truncated_header_does_not_stop_the_batch(detect_run):
    e = assert_detect_row(detect_run, "IM0001.dcm", "DicomError", "truncated or incomplete DICOM")
    assert e["stage"] == "read"


def test_detect_model_of_another_task(tmp_path, phantom, capsys, grading_model):
    root = tmp_path / "in"
    write_phantom(root, 1, phantom)
    cli_error(capsys, CheckpointError, ["detect", str(root), "--out", str(tmp_path / "o"), "--model", str(grading_model)],
              grading_model, "model was made for task 'grade', not detection")


def test_read_mixed_series_folder_is_refused(tmp_path):
    """Reading one 'series' folder (grade SCAN, Slicer's Load) that holds two series."""
    from SpineSSLLib.io import read_scan

    small_series(tmp_path / "s", 1)
    small_series(tmp_path / "s", 2, file_names=[f"b{k}" for k in range(6)])
    with pytest.raises(DicomError) as e:
        read_scan(tmp_path / "s")
    one_line(str(e.value), tmp_path / "s", "mixed series: 2 SeriesInstanceUIDs")


# --------------------------------------------------------------------------------------------
# grade: model folders and checkpoints
# --------------------------------------------------------------------------------------------

TINY = dict(width=0.0625, fc6=32, fc7=16, input_scale=0.5)


@pytest.fixture(scope="module")
def grading_model(tmp_path_factory):
    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib import grading
    from SpineSSLLib.models import ModelConfig

    d = tmp_path_factory.mktemp("gm") / "best"
    cfg = ModelConfig.preset("small", **TINY)
    net = grading.build_grading_model(cfg, 4, "scratch", seed=1)
    ckpt.save_checkpoint(d, net, {"task": "grade", "model": cfg.to_dict(), "num_classes": 4,
                                  "in_hw": list(grading.IVD_HW), "class_names": ["1", "2", "3", "4"],
                                  "mode": "scratch"})
    return d


@pytest.fixture(scope="module")
def volume_file(tmp_path_factory, phantom):
    from SpineSSLLib.extract import extract_scan, save_volumes

    scan, truth = phantom
    p = tmp_path_factory.mktemp("v") / "scan.npz"
    save_volumes(p, extract_scan(scan, truth))
    return p


def _graded(tmp_path, grading_model, volume_file):
    model = tmp_path / "model"
    shutil.copytree(grading_model, model)
    out = tmp_path / "out"
    assert cli(["-q", "grade", str(model), "--volumes", str(volume_file), "--out", str(out), "--no-tta",
                "--device", "cpu"]) == 0
    return model, out, snapshot(out)


def test_grade_truncated_checkpoint_keeps_earlier_grades(tmp_path, grading_model, volume_file, capsys):
    model, out, before = _graded(tmp_path, grading_model, volume_file)
    w = model / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    cli_error(capsys, CheckpointError, ["grade", str(model), "--volumes", str(volume_file), "--out", str(out), "--device", "cpu"],
              w, "contents do not match checkpoint.json (truncated or replaced)")
    assert snapshot(out) == before


def test_grade_folder_that_is_not_a_model(tmp_path, volume_file, capsys):
    (tmp_path / "m").mkdir()
    cli_error(capsys, CheckpointError, ["grade", str(tmp_path / "m"), "--volumes", str(volume_file), "--out", str(tmp_path / "o")],
              tmp_path / "m", "not a grading checkpoint folder")


def test_grade_with_the_detector_model(tmp_path, volume_file, capsys):
    from SpineSSLLib.detect.model import BUNDLED

    cli_error(capsys, CheckpointError, ["grade", str(BUNDLED), "--volumes", str(volume_file), "--out", str(tmp_path / "o")],
              BUNDLED, "not a grading model (task 'detect')")


def test_grade_corrupt_volume_file(tmp_path, grading_model, volume_file, capsys):
    bad = tmp_path / "cut.npz"
    bad.write_bytes(volume_file.read_bytes()[:5000])
    cli_error(capsys, ManifestError, ["grade", str(grading_model), "--volumes", str(bad), "--out", str(tmp_path / "o")],
              bad, "cannot read volume file")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# pretrain: hand-edited manifests, config typos, a checkpoint of another preset
# --------------------------------------------------------------------------------------------

def _vb_cohort(root, n_subjects=3):
    from pretrain_helpers import cohort_rows, write_cohort

    rng = np.random.default_rng(0)
    write_cohort(root, cohort_rows(n_subjects=n_subjects, frac_long=1.0, three_visit_every=100, twins_every=100),
                 make_volume=lambda r: np.full((9, 224, 224), rng.uniform(0.2, 0.8), np.float32))
    return root


PRE = ["--workers", "0", "--device", "cpu", "--epochs", "1", "--batch-size", "4", "--no-augment"]


def test_pretrain_manifest_lists_a_missing_volume_file(tmp_path, capsys):
    c = _vb_cohort(tmp_path / "c")
    victim = c / "volumes" / "S0002_1.npz"
    victim.unlink()
    cli_error(capsys, ManifestError, ["pretrain", str(c), "--out", str(tmp_path / "o"), "--preset", "small", *PRE],
              victim, "volume file listed in volumes.csv is missing")


def test_pretrain_manifest_missing_columns(tmp_path, capsys):
    c = _vb_cohort(tmp_path / "c")
    lines = (c / "volumes.csv").read_text().splitlines()
    cut = [",".join(x.split(",")[:-1]) for x in lines]  # 'index' column deleted in a spreadsheet
    (c / "volumes.csv").write_text("\n".join(cut) + "\n")
    cli_error(capsys, ManifestError, ["pretrain", str(c), "--out", str(tmp_path / "o"), "--preset", "small", *PRE],
              c / "volumes.csv", "missing columns index")


@pytest.mark.parametrize("conf, cause", [({"modle": {"preset": "small"}}, "unknown pretraining config keys: modle"),
                                         ({"train": {"lr_rate": 0.1}}, "unknown training config keys: lr_rate")],
                         ids=["top-level", "nested"])
def test_pretrain_config_typo(tmp_path, capsys, conf, cause):
    c = _vb_cohort(tmp_path / "c")
    f = tmp_path / "pre.json"
    f.write_text(json.dumps(conf))
    cli_error(capsys, ConfigError, ["pretrain", str(c), "--out", str(tmp_path / "o"), "--config", str(f), *PRE], f, cause)
    assert not (tmp_path / "o").exists()


def test_pretrain_splits_file_missing_subjects(tmp_path, capsys):
    from SpineSSLLib import data as D

    c = _vb_cohort(tmp_path / "c")
    rows_ = D.read_vb_table(c)
    sp = D.make_splits([r for r in rows_ if r.subject_key != "S0002"], 0, (0.5, 0.5, 0.0))
    D.write_splits(tmp_path / "splits.json", sp)
    cli_error(capsys, ManifestError, ["pretrain", str(c), "--out", str(tmp_path / "o"), "--splits", str(tmp_path / "splits.json"),
                       "--preset", "small", *PRE],
              tmp_path / "splits.json", "1 subject(s) of the cohort are not in the splits file")


def test_pretrain_resume_with_a_checkpoint_of_another_preset(tmp_path, capsys):
    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.models import ModelConfig, SiameseNet, VGGMNet

    c = _vb_cohort(tmp_path / "c")
    out = tmp_path / "o"
    cfg = ModelConfig.preset("small", **TINY)
    (out / "last").mkdir(parents=True)
    (out / "pretrain_config.json").write_text(json.dumps({"model": {"preset": "small", **TINY}}))
    ckpt.save_checkpoint(out / "last", SiameseNet(VGGMNet(cfg, 7)), {"task": "pretrain", "model": cfg.to_dict(),
                                                                    "num_classes": 7, "in_hw": [224, 224]},
                         epoch=0, train_state={"epoch": 0})
    before = snapshot(out)
    last = cli_error(capsys, CheckpointError, ["pretrain", str(c), "--out", str(out), "--resume", "--preset", "small", *PRE],
                     out / "last" / "checkpoint.json", "made for another model configuration (")
    assert "fc6 32 vs 256" in last and "fc7 16 vs 128" in last
    assert snapshot(out) == before


# --------------------------------------------------------------------------------------------
# the Slicer scene layer (slicer-core)
# --------------------------------------------------------------------------------------------



def test_scene_markups_unknown_label():
    import vtk

    from SpineSSLLib import scene as S

    node = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "spine points")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, 0), "L4")
    node.AddControlPoint(vtk.vtkVector3d(0, 0, -30), "Lumbar 5")
    with pytest.raises(LevelsError) as e:
        S.levels_from_markups(node)
    one_line(str(e.value), "markups 'spine points'", "unknown control point label 'Lumbar 5'")


def test_scene_markups_duplicate_label():
    import vtk

    from SpineSSLLib import scene as S

    node = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "twice")
    for lab, z in (("L3", 30), ("L4", 0), ("L4", -3), ("L5", -30)):
        node.AddControlPoint(vtk.vtkVector3d(0, 0, z), lab)
    levels = S.levels_from_markups(node)
    assert levels.names == ["L3", "L5"] and "L4: duplicate label in markups; skipped" in levels.issues


def test_scene_label_map_geometry_does_not_match(phantom):
    from SpineSSLLib import scene as S
    from SpineSSLLib.io import Scan

    scan, truth = phantom
    scene = slicer.vtkMRMLScene()
    vnode = S.volume_node_from_scan(scene, scan, "T2")
    labels = render_labels(scan.affine, scan.shape, truth).astype(np.float32)
    coarse = scan.affine.copy()
    coarse[:3, :2] *= 2  # a label map made on a 2x coarser grid
    lnode = S.volume_node_from_scan(scene, Scan(labels, coarse), "T2 labels")
    with pytest.raises(LevelsError) as e:
        S.levels_from_label_node(lnode, vnode, "synthetic")
    one_line(str(e.value), "'T2 labels'", "label map geometry (origin/spacing/direction) does not match")


def test_scene_load_truncated_volume_file(tmp_path, phantom):
    from SpineSSLLib import scene as S

    scan, _ = phantom
    p = write_image(tmp_path / "t2.nrrd", scan.array, scan.affine)
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(InputError) as e:
        S.load_volume(slicer.vtkMRMLScene(), p)
    one_line(str(e.value), p, "not a readable image volume")


def test_scene_grade_with_a_pretraining_checkpoint(tmp_path, volume_file):
    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib import scene as S
    from SpineSSLLib.extract import load_volumes
    from SpineSSLLib.models import ModelConfig, VGGMNet

    cfg = ModelConfig.preset("small", **TINY)
    d = ckpt.save_checkpoint(tmp_path / "pre", VGGMNet(cfg, 7), {"task": "pretrain", "model": cfg.to_dict(),
                                                                 "num_classes": 7, "in_hw": [224, 224]})
    with pytest.raises(CheckpointError) as e:
        S.grade_volumes(load_volumes(volume_file), d, tta=False, device="cpu")
    one_line(str(e.value), d, "not a grading model (task 'pretrain')")



def test_slicer_batch_markups_unknown_label_keeps_earlier_outputs(tmp_path, phantom):
    """The Slicer module's batch (SpineSSLBatch.process_batch): a scan whose levels file was
    edited into an unknown label fails in batch.csv, the other scan is done, and the failed
    scan's outputs from the earlier run are left as they were."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "SpineSSL" / "Scripts" / "SpineSSLBatch.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    batch = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = batch
    spec.loader.exec_module(batch)

    root, lv, out = tmp_path / "in", tmp_path / "levels", tmp_path / "out"
    lv.mkdir()
    _, truth = phantom
    good = [(lev.name, lev.centroid) for lev in truth]
    items = []
    for n in (1, 2):
        write_phantom(root, n, phantom)
        _markups(lv / f"s{n}.mrk.json", good)
        items.append(batch.BatchItem(root / f"s{n}", lv / f"s{n}.mrk.json", key=f"scan{n}"))
    assert [r["status"] for r in batch.process_batch(items[1:], out)] == ["ok"]  # the earlier run
    before = snapshot(out / "scan2")
    _markups(lv / "s2.mrk.json", good + [("L6", truth["S1"].centroid - [0, 0, 30])])
    res = batch.process_batch(items, out)
    assert [r["status"] for r in res] == ["ok", "failed"]
    one_line(res[1]["error"], "LevelsError: <levels>: unknown control point label 'L6'")
    assert str(lv) not in res[1]["error"]  # the input path is not written
    assert [r["status"] for r in rows(out / "batch.csv")] == ["ok", "failed"]
    assert (out / "scan1" / "scan1.seg.nrrd").is_file()
    assert snapshot(out / "scan2") == before


def test_grade_train_resume_with_a_checkpoint_of_another_preset(tmp_path, capsys, grading_model):
    from grading_helpers import write_contract_cohort

    c = write_contract_cohort(tmp_path / "c", n_subjects=2)
    out = tmp_path / "g"
    shutil.copytree(grading_model, out / "last")  # a run made with other sizes
    before = snapshot(out)
    cli_error(capsys, CheckpointError, ["grade-train", str(c), "--out", str(out), "--mode", "scratch", "--preset",
                                        "small", "--resume", "--epochs", "1", "--device", "cpu",
                                        "--no-augment"],
              out / "last" / "checkpoint.json", "made for another model configuration (")
    assert "fc6 32 vs 256" in capsys.readouterr().err or True
    assert snapshot(out) == before  # refused before anything in OUT is written
