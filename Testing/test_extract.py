"""extract: VB/IVD volumes against exact phantom geometry and the synthetic cohort's truth;
source equivalence (truth / markups / label map / SpineNet); batch CLI behaviour."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from extract_phantom import (BG_VALUE, VB_VALUE, phantom_scan, relabel_affine, render, render_labels,
                             sagittal_affine, spinenet_dicts, truth_levels, write_image)

from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
from SpineSSLLib import levels as L
from SpineSSLLib.cli import main as cli
from SpineSSLLib.extract import ExtractConfig, extract_scan, load_volumes, save_volumes
from SpineSSLLib.extract.files import read_arrays
from SpineSSLLib.io import Scan, read_dicom_series
from SpineSSLLib.synth.dicom import write_series

torch.set_num_threads(1)
CENTRE = np.array([111.5, 111.5, 4.0, 1.0])


@pytest.fixture(scope="module")
def phantom():
    return phantom_scan(shape=(13, 256, 112), spacing=(1.2, 1.2, 4.0), lateral_shift=1.5)


@pytest.fixture(scope="module")
def phantom_volumes(phantom):
    scan, lv = phantom
    return extract_scan(scan, lv)


def content_centre_mm(vol2d, pixel_mm):
    """Offset (mm) from the slice centre of the vertebral body found by its intensity (0.5 after
    normalisation; discs and marker are brighter): a check that does not trust the affine."""
    from scipy import ndimage

    body = ndimage.binary_opening((vol2d > 0.42) & (vol2d < 0.58), iterations=4)  # cut thin edge bridges
    lab, _ = ndimage.label(ndimage.binary_fill_holes(body))
    H, W = vol2d.shape
    blob = lab == lab[H // 2, W // 2]
    jj, ii = np.nonzero(blob)
    return np.array([ii.mean() - (W - 1) / 2, jj.mean() - (H - 1) / 2]) * pixel_mm


def test_all_volumes_present_with_contract_shapes(phantom_volumes):
    sv = phantom_volumes
    assert sv.vb.shape == (7, 9, 224, 224) and sv.ivd.shape == (6, 9, 112, 224)
    assert sv.vb_present.all() and sv.ivd_present.all()
    assert sv.vb.min() >= 0 and sv.vb.max() <= 1
    assert sv.levels == LEVEL_NAMES and sv.discs == DISC_NAMES


def test_vb_centre_lands_in_volume_centre(phantom, phantom_volumes):
    scan, lv = phantom
    sv = phantom_volumes
    for i, name in enumerate(LEVEL_NAMES):
        # 1) the affine: the volume centre is the VB centroid in-plane; across slices it is the
        #    scan slice nearest the centroid (so at most half a slice spacing away)
        d = (sv.vb_affine[i] @ CENTRE)[:3] - lv[name].centroid
        assert np.linalg.norm(d[1:]) < 2.0 and abs(d[0]) <= 0.5 * scan.spacing[2] + 1e-9
        # 2) the pixels: the VB body (bright, 0.5 after normalisation) is centred in slice 4
        pixel = np.linalg.norm(sv.vb_affine[i][:3, 0])
        off = content_centre_mm(sv.vb[i, 4], pixel)
        assert np.linalg.norm(off) < 2.0, (name, off)


def test_level_order_preserved(phantom, phantom_volumes):
    scan, lv = phantom
    z = [(phantom_volumes.vb_affine[i] @ CENTRE)[2] for i in range(7)]
    assert all(a > b for a, b in zip(z, z[1:]))  # T12 highest ... S1 lowest
    for d, (up, lo) in enumerate(zip(LEVEL_NAMES[:-1], LEVEL_NAMES[1:])):
        c = (phantom_volumes.ivd_affine[d] @ np.array([111.5, 55.5, 4, 1]))[:3]
        mid = 0.5 * (lv[up].centroid + lv[lo].centroid)
        assert np.linalg.norm(c[1:] - mid[1:]) < 1.0  # between its two VBs (in-plane)


def test_volume_axes_follow_contract(phantom, phantom_volumes):
    sv = phantom_volumes
    for a in list(sv.vb_affine) + list(sv.ivd_affine):
        assert a[1, 0] > 0  # columns run anterior -> posterior (+y)
        assert a[2, 1] < 0  # rows run superior -> inferior (-z)
        assert a[0, 2] > 0  # slices run right -> left (+x) whatever the scan's slice order
    # the IVD is rotated so the disc is horizontal: the bright disc band spans rows evenly
    disc = sv.ivd[3, 4]
    rows_bright = np.nonzero((disc > 0.75).mean(axis=1) > 0.3)[0]
    assert len(rows_bright) > 3 and abs(rows_bright.mean() - 55.5) < 3


def test_marker_sits_anterior_superior(phantom_volumes):
    """The phantom's marker blob near the anterior-superior corner must appear top-left."""
    v = phantom_volumes.vb[3, 4, 80:145]  # rows inside the body (discs lie outside)
    jj, ii = np.nonzero(v >= 0.99)  # marker is 3x the VB intensity -> clipped at 1
    assert len(ii) > 100 and ii.mean() < 100 and jj.mean() + 80 < 100


def test_intensity_normalised_by_neighbouring_vbs():
    # VB intensities differ per level: T12 is normalised by L1 only, L2 by L1 and L3
    shape, spacing = (13, 256, 112), (1.2, 1.2, 4.0)
    lv = truth_levels()
    aff = sagittal_affine(shape, spacing)
    base = render(aff, shape, lv)
    factors = {n: 1.0 + 0.25 * i for i, n in enumerate(LEVEL_NAMES)}
    scaled = base.copy()
    labels = render_labels(aff, shape, lv, values={n: i + 1 for i, n in enumerate(LEVEL_NAMES)})
    for i, n in enumerate(LEVEL_NAMES):
        scaled[labels == i + 1] *= factors[n]
    sv = extract_scan(Scan(scaled, aff), lv)
    for i, n in enumerate(LEVEL_NAMES):
        assert sv.vb_median[i] == pytest.approx(VB_VALUE * factors[n], rel=0.03)
    # T12's own body, divided by L1's median, clipped/2
    t12 = np.median(sv.vb[0, 4, 100:124, 100:124])
    assert t12 == pytest.approx(factors["T12"] / factors["L1"] / 2, rel=0.04)
    # S1 by L5 only
    s1 = np.median(sv.vb[6, 4, 100:124, 100:124])
    assert s1 == pytest.approx(factors["S1"] / factors["L5"] / 2, rel=0.04)
    # background outside the spine, divided by the neighbours' median
    assert np.median(sv.vb[3, 4, :, :20]) == pytest.approx(BG_VALUE / (VB_VALUE * factors["L3"]) / 2, rel=0.1)


def test_zero_padding_when_the_scan_has_few_slices():
    # 5 slices at x = 8, 4, 0, -4, -8 mm: every VB (x = 0) has only 2 slices on each side
    shape, spacing = (5, 256, 112), (1.2, 1.2, 4.0)
    aff = sagittal_affine(shape, spacing, origin=(8.0, -60.0, 90.0))
    lv = truth_levels()
    sv = extract_scan(Scan(render(aff, shape, lv), aff), lv)
    assert sv.vb_present.all() and sv.ivd_present.all()
    assert list(sv.vb_mid_slice) == [2] * 7
    for t in range(9):
        if t in (0, 1, 7, 8):
            assert sv.vb[:, t].max() == 0 and sv.ivd[:, t].max() == 0
        else:
            assert sv.vb[:, t].max() > 0.4
    # slice order: volume slice index grows towards patient left (+x); scan k grows to the right
    full = extract_scan(Scan(render(sagittal_affine((13, 256, 112), spacing), (13, 256, 112), lv),
                             sagittal_affine((13, 256, 112), spacing)), lv)
    np.testing.assert_allclose(sv.vb[:, 2:7], full.vb[:, 2:7], atol=1e-5)


def test_missing_levels_when_field_of_view_is_cut():
    # rows stop above S1: S1 outside, L5-S1 cannot be extracted, the rest is
    shape, spacing = (13, 190, 112), (1.2, 1.2, 4.0)
    scan, lv = phantom_scan(shape=shape, spacing=spacing)
    sv = extract_scan(scan, lv)
    assert list(sv.vb_present) == [True] * 6 + [False]
    assert list(sv.ivd_present) == [True] * 5 + [False]
    assert "S1: outside the image volume" in sv.issues
    assert sv.vb[6].max() == 0 and sv.ivd[5].max() == 0


def test_one_grid_sample_call_per_scan(phantom, monkeypatch):
    calls = []
    real = torch.nn.functional.grid_sample
    monkeypatch.setattr(torch.nn.functional, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    scan, lv = phantom
    extract_scan(scan, lv)
    assert len(calls) == 1


@pytest.mark.parametrize("ops", [dict(flip_k=True, transpose_ij=True), dict(flip_i=True, flip_j=True, flip_k=True),
                                 dict(transpose_ij=True, flip_i=True)])
def test_rotated_flipped_reordered_copy_extracts_the_same_volumes(tmp_path, phantom, ops):
    scan, lv = phantom
    hdr = {"PatientID": "P1", "SeriesDescription": "SAG T2"}
    write_series(tmp_path / "a", scan.array, scan.affine, hdr)
    aff2, apply = relabel_affine(scan.affine, scan.shape, **ops)
    perm = np.random.default_rng(3).permutation(scan.shape[0])
    write_series(tmp_path / "b", apply(scan.array), aff2, hdr, file_names=[f"img{p:03d}" for p in perm])
    a, b = read_dicom_series(tmp_path / "a"), read_dicom_series(tmp_path / "b")
    assert not np.allclose(a.affine, b.affine)  # really a different voxel layout
    sa, sb = extract_scan(a, lv), extract_scan(b, lv)
    np.testing.assert_allclose(sa.vb_affine, sb.vb_affine, atol=1e-6)
    np.testing.assert_allclose(sa.ivd_affine, sb.ivd_affine, atol=1e-6)
    np.testing.assert_allclose(sa.vb, sb.vb, atol=1e-4)
    np.testing.assert_allclose(sa.ivd, sb.ivd, atol=1e-4)


def test_anisotropic_voxels_give_matching_volumes():
    lv = truth_levels()
    iso = Scan(render(sagittal_affine((13, 256, 112), (1.2, 1.2, 4.0)), (13, 256, 112), lv),
               sagittal_affine((13, 256, 112), (1.2, 1.2, 4.0)))
    ani_aff = sagittal_affine((13, 440, 80), (1.7, 0.7, 4.0))
    ani = Scan(render(ani_aff, (13, 440, 80), lv), ani_aff)
    a, b = extract_scan(iso, lv), extract_scan(ani, lv)
    np.testing.assert_allclose(a.vb_affine, b.vb_affine, atol=1e-6)
    r = np.corrcoef(a.vb[:, 4].ravel(), b.vb[:, 4].ravel())[0, 1]
    assert r > 0.9
    assert np.abs(a.vb[:, 4] - b.vb[:, 4]).mean() < 0.04


# Tolerances for source equivalence (documented in docs/extraction.md):
# markups (corners) and SpineNet == truth up to float rounding; label map: centres < 1 voxel
# in-plane and at most one slice apart (the voxelised centroid can fall on the midpoint between
# two slices), volumes mean |difference| < 0.03 and correlation > 0.95.

def test_sources_give_the_same_volumes(tmp_path, phantom):
    scan, lv = phantom
    ref = extract_scan(scan, lv)
    p = tmp_path / "m.mrk.json"
    p.write_text(json.dumps(L.to_markups_dict(lv, "RAS")))
    from_markups = extract_scan(scan, L.from_markups(p))
    np.testing.assert_allclose(from_markups.vb, ref.vb, atol=1e-4)
    np.testing.assert_allclose(from_markups.ivd, ref.ivd, atol=1e-4)
    from_sn = extract_scan(scan, L.from_spinenet(spinenet_dicts(scan, lv), scan))
    np.testing.assert_allclose(from_sn.vb, ref.vb, atol=1e-3)
    labp = write_image(tmp_path / "lab.nii.gz", render_labels(scan.affine, scan.shape, lv), scan.affine)
    from_lab = extract_scan(scan, L.from_labelmap(labp, scan, L.resolve_label_mapping("synthetic")))
    assert from_lab.vb_present.all() and from_lab.ivd_present.all()
    c_ref = ref.vb_affine[:, :3, :] @ CENTRE
    c_lab = from_lab.vb_affine[:, :3, :] @ CENTRE
    assert np.linalg.norm((c_ref - c_lab)[:, 1:], axis=1).max() < scan.spacing[0]  # in-plane
    assert np.abs((c_ref - c_lab)[:, 0]).max() <= scan.spacing[2] + 1e-6  # at most one slice apart
    for a, b in ((ref.vb, from_lab.vb), (ref.ivd, from_lab.ivd)):
        assert np.abs(a - b).mean() < 0.03
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_save_and_load_volumes(tmp_path, phantom, phantom_volumes):
    scan, _ = phantom
    save_volumes(tmp_path / "v.npz", phantom_volumes, scan.affine, scan.shape)
    z = read_arrays(tmp_path / "v.npz")
    assert z["vb"].dtype == np.float16 and z["vb"].shape == (7, 9, 224, 224)
    assert z["ivd"].dtype == np.float16 and z["ivd"].shape == (6, 9, 112, 224) and z["vb_affine"].dtype == np.float64
    assert list(z["levels"]) == list(LEVEL_NAMES)
    np.testing.assert_array_equal(z["scan_shape"], scan.shape)
    np.testing.assert_array_equal(z["vb"], phantom_volumes.vb.astype(np.float16))   # lossless codec
    back = load_volumes(tmp_path / "v.npz")
    np.testing.assert_allclose(back.vb, phantom_volumes.vb, atol=1e-3)
    np.testing.assert_array_equal(back.vb_affine, phantom_volumes.vb_affine)
    # the storage (issue #17): a zip of uncompressed members; vb/ivd are Zstandard-compressed .npy files
    # (decodable with the zstandard package + np.load), the small arrays plain .npy that np.load reads
    import io
    import zipfile

    import zstandard

    with zipfile.ZipFile(tmp_path / "v.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        names = set(zf.namelist())
        assert {"vb.npy.zst", "ivd.npy.zst", "vb_present.npy", "levels.npy", "scan_affine.npy"} <= names
        raw = np.load(io.BytesIO(zstandard.ZstdDecompressor().decompress(zf.read("ivd.npy.zst"))))
        np.testing.assert_array_equal(raw, z["ivd"])
        assert sum(i.file_size for i in zf.infolist()) < 0.9 * (z["vb"].nbytes + z["ivd"].nbytes)  # compressed
    with np.load(tmp_path / "v.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["vb_affine"], z["vb_affine"])
    # the same arrays give the same bytes (resumed and sharded extractions are compared member-wise)
    save_volumes(tmp_path / "w.npz", phantom_volumes, scan.affine, scan.shape)
    with zipfile.ZipFile(tmp_path / "v.npz") as a, zipfile.ZipFile(tmp_path / "w.npz") as b:
        assert all(a.read(m) == b.read(m) for m in a.namelist())


@pytest.mark.parametrize("writer", ["deflate1", "savez_compressed", "savez"])
def test_pre_issue17_volume_files_still_load(tmp_path, phantom, phantom_volumes, writer):
    """Cohorts extracted before issue #17 (every member a zip-deflated .npy, written by the old
    save_volumes; or any np.savez file in the contract) load through the same reader."""
    import zipfile

    scan, _ = phantom
    sv = phantom_volumes
    arrays = dict(vb=sv.vb.astype(np.float16), vb_present=sv.vb_present, vb_affine=sv.vb_affine,
                  ivd=sv.ivd.astype(np.float16), ivd_present=sv.ivd_present, ivd_affine=sv.ivd_affine,
                  levels=np.array(sv.levels), discs=np.array(sv.discs), vb_mid_slice=sv.vb_mid_slice,
                  ivd_mid_slice=sv.ivd_mid_slice, vb_width_mm=sv.vb_width_mm, vb_median=sv.vb_median,
                  scan_affine=scan.affine, scan_shape=np.asarray(scan.shape))
    old = tmp_path / "old.npz"
    if writer == "deflate1":  # the pre-#17 writer, verbatim
        with zipfile.ZipFile(old, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    else:
        getattr(np, writer)(old, **arrays)
    save_volumes(tmp_path / "new.npz", sv, scan.affine, scan.shape)
    a, b = load_volumes(old), load_volumes(tmp_path / "new.npz")
    for k in ("vb", "ivd", "vb_present", "ivd_present", "vb_affine", "ivd_affine", "vb_mid_slice", "vb_median"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert a.levels == b.levels and a.discs == b.discs
    assert read_arrays(old, ["ivd"])["ivd"].dtype == np.float16


def test_damaged_volume_files_name_the_file(tmp_path, phantom_volumes):
    import zipfile

    from SpineSSLLib.errors import ManifestError

    good = tmp_path / "v.npz"
    save_volumes(good, phantom_volumes)
    with pytest.raises(ManifestError, match="not a SpineSSL volume file \\(no grades\\)"):   # a member missing
        read_arrays(good, ["vb", "grades"])
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("vb.npy.zst")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 100:start + 400] = b"\0" * 300                 # bytes of the compressed vb damaged
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="cannot read member vb.npy.zst") as e:
        read_arrays(bad, ["vb"])
    assert str(bad) in str(e.value) and len(str(e.value).splitlines()) == 1
    np.testing.assert_array_equal(read_arrays(bad, ["ivd"])["ivd"], read_arrays(good, ["ivd"])["ivd"])
    with pytest.raises(ManifestError, match="cannot read volume file"):
        (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:4000])
        read_arrays(tmp_path / "cut.npz")
    with pytest.raises(ManifestError, match="is missing"):
        read_arrays(tmp_path / "absent.npz")


def test_config_validation():
    from SpineSSLLib.errors import ConfigError

    with pytest.raises(ConfigError):
        ExtractConfig(n_slices=8)
    with pytest.raises(ConfigError):
        ExtractConfig(vb_fov=0)


def test_no_valid_level_is_an_error(phantom):
    scan, lv = phantom
    from SpineSSLLib.errors import LevelsError

    far = L.LevelSet({"L3": L.Level("L3", [500.0, 0, 0], lv["L3"].corners + [500.0, 0, 0])})
    with pytest.raises(LevelsError, match="no valid vertebra level"):
        extract_scan(scan, far)


# --------------------------------------------------------------------------------------------
# The synthetic cohort, end to end through the CLI
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from SpineSSLLib.synth import generate_cohort
    from SpineSSLLib.synth.config import preset

    out = tmp_path_factory.mktemp("synth") / "syn"
    generate_cohort(out, preset("tiny", subjects=2, followup_fraction=0.5, twin_fraction=0.0))
    c = out.parent / "C"
    assert cli(["-q", "index", str(out / "dicom"), "--out", str(c)]) == 0
    return out, c


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cohort_extracts_all_13_volumes_with_truth_geometry(cohort):
    out, c = cohort
    assert cli(["-q", "extract", str(c), "--levels", f"truth:{out / 'truth'}", "--qc"]) == 0
    series = [r for r in _csv(c / "series.csv") if r["status"] == "selected"]
    vols = _csv(c / "volumes.csv")
    assert len(series) >= 2 and len(vols) == 13 * len(series)
    truth = {}
    for p in (out / "truth").glob("*.json"):
        d = json.loads(p.read_text())
        truth[d["series_instance_uid"]] = d
    for r in series:
        assert (c / "qc" / f"{r['scan_key']}.png").stat().st_size > 10_000
        rows = [v for v in vols if v["scan_key"] == r["scan_key"]]
        assert [v["level"] for v in rows] == list(LEVEL_NAMES) + list(DISC_NAMES)
        assert all(v["subject_key"] == r["subject_key"] and v["interval_days"] == r["interval_days"] for v in rows)
        sv = load_volumes(c / rows[0]["file"])
        assert sv.vb_present.all() and sv.ivd_present.all()
        # the truth file of this scan: match through the VB centres (no UID is stored in C)
        centres = (sv.vb_affine[:, :3, :] @ CENTRE)
        best = min(truth.values(), key=lambda d: np.abs(
            centres - np.array([lv["centroid_lps"] for lv in d["levels"]["levels"]])).sum())
        tl = np.array([lv["centroid_lps"] for lv in best["levels"]["levels"]])
        scan_aff = np.array(best["affine_lps"])
        n = scan_aff[:3, 2] / np.linalg.norm(scan_aff[:3, 2])
        d = centres - tl
        inplane = d - (d @ n)[:, None] * n
        assert np.linalg.norm(inplane, axis=1).max() < 2.0  # VB centre in the volume centre
        assert np.abs(d @ n).max() <= 0.5 * np.linalg.norm(scan_aff[:3, 2]) + 1e-6  # nearest slice
        grades = {g["name"]: g["grade"] for g in best["discs"]}
        for v in rows:
            if v["kind"] == "IVD":
                assert v["grade"] == ("" if grades[v["level"]] is None else str(grades[v["level"]]))


def test_cohort_resume_and_sources_agree(cohort, tmp_path):
    out, c = cohort
    assert cli(["-q", "extract", str(c), "--levels", f"truth:{out / 'truth'}"]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in (c / "volumes").glob("*.npz")}
    assert cli(["-q", "extract", str(c), "--levels", f"truth:{out / 'truth'}"]) == 0  # all skipped
    assert {p.name: p.stat().st_mtime_ns for p in (c / "volumes").glob("*.npz")} == first
    # label-map source (the synthetic SPIDER-numbered maps) on a copy of the index
    c2 = tmp_path / "C2"
    shutil.copytree(c, c2, ignore=shutil.ignore_patterns("volumes", "qc", "volumes.csv"))
    assert cli(["-q", "extract", str(c2), "--levels", f"labels:{out / 'truth'}", "--label-mapping", "synthetic"]) == 0
    for p in (c / "volumes").glob("*.npz"):
        a, b = load_volumes(p), load_volumes(c2 / "volumes" / p.name)
        ca, cb = a.vb_affine[:, :3, :] @ CENTRE, b.vb_affine[:, :3, :] @ CENTRE
        step = a.vb_affine[0, :3, 2]  # one slice, along the slice normal
        d = ca - cb
        across = d @ step / (step @ step)
        inplane = d - across[:, None] * step
        assert np.linalg.norm(inplane, axis=1).max() < 2.0  # documented tolerance
        assert np.abs(across).max() <= 1.0 + 1e-6  # the same or the neighbouring slice
        assert np.corrcoef(a.vb.ravel(), b.vb.ravel())[0, 1] > 0.8


def test_cohort_bad_scan_is_reported_and_batch_continues(cohort, tmp_path, capsys):
    out, c = cohort
    src = tmp_path / "dicom"
    shutil.copytree(out / "dicom", src)
    c3 = tmp_path / "C3"
    assert cli(["-q", "index", str(src), "--out", str(c3)]) == 0
    # after indexing, one file's pixel data gets truncated
    victim = sorted(p for p in src.rglob("*") if p.is_file())[3]
    victim.write_bytes(victim.read_bytes()[:-500])
    rc = cli(["-q", "extract", str(c3), "--levels", f"truth:{out / 'truth'}", "--workers", "2"])
    assert rc == 1
    errs = [e for e in _csv(c3 / "errors.csv") if e["stage"] != "index"]
    assert len(errs) == 1 and errs[0]["error_type"] == "DicomError" and "truncated" in errs[0]["message"]
    assert errs[0]["stage"] == "read" and errs[0]["file"] == os.path.relpath(victim, src)
    n_sel = sum(r["status"] == "selected" for r in _csv(c3 / "series.csv"))
    scans = _csv(c3 / "scans.csv")
    assert sorted(r["status"] for r in scans) == ["failed"] + ["ok"] * (n_sel - 1)
    assert "truncated" in next(r["error"] for r in scans if r["status"] == "failed")
    assert len(_csv(c3 / "volumes.csv")) == 13 * (n_sel - 1)
    outp = capsys.readouterr().out
    assert "1 failed" in outp
    # privacy: no identifier of the source headers in anything written
    from SpineSSLLib.privacy import audit_outputs

    assert audit_outputs(c3, src).ok


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    rc = cli(["extract", str(tmp_path), "--levels", f"truth:{tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not an indexed cohort" in err
    rc = cli(["extract", str(tmp_path), "--levels", "bogus"])
    assert rc == 2


# Rows for patients 1 and 2 of SPIDER's radiological_gradings.csv (van der Graaf et al. 2024,
# CC-BY 4.0; /work/shared/data/spider/), in the file's own format.
SPIDER_GRADINGS = """Patient,IVD label,Modic,UP endplate,LOW endplate,Spondylolisthesis,Disc herniation,Disc narrowing,Disc bulging,Pfirrman grade
1,1,0,0,0,0,0,1,1,3
1,2,0,0,0,0,0,0,1,3
1,3,0,0,0,0,0,1,1,3
1,4,0,0,0,0,0,1,1,4
1,5,0,0,0,0,0,1,0,4
1,6,0,0,1,0,0,1,0,4
1,7,0,0,0,0,0,1,0,4
2,1,0,0,0,0,0,0,1,4
2,2,2,1,1,0,0,1,1,4
2,3,2,1,1,0,0,1,1,3
2,4,2,1,1,0,0,0,1,4
2,5,2,1,1,0,0,0,1,4
2,6,0,0,0,0,0,0,0,4
"""


def test_spider_layout_mha_with_masks_and_gradings(tmp_path):
    """SPIDER-style cohort: images/<patient>_t2.mha + masks/<patient>_t2.mha (SPIDER numbering,
    no sacrum label) + the gradings table; index from a table, extract with label maps."""
    root = tmp_path / "spider"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    shape, spacing = (13, 256, 112), (1.2, 1.2, 4.0)
    aff = sagittal_affine(shape, spacing)
    lv = truth_levels()
    img = render(aff, shape, lv)
    spider = {"T12": 6, "L1": 5, "L2": 4, "L3": 3, "L4": 2, "L5": 1, "S1": 0}
    for p in ("1", "2"):
        write_image(root / "images" / f"{p}_t2.mha", img, aff)
        write_image(root / "masks" / f"{p}_t2.mha", render_labels(aff, shape, lv, values=spider), aff)
    (tmp_path / "table.csv").write_text("file,subject,interval_days\nimages/1_t2.mha,1,0\nimages/2_t2.mha,2,0\n")
    (tmp_path / "grades.csv").write_text(SPIDER_GRADINGS)
    c = tmp_path / "C"
    assert cli(["-q", "index", str(root), "--out", str(c), "--table", str(tmp_path / "table.csv")]) == 0
    assert cli(["-q", "extract", str(c), "--levels", f"labels:{root / 'masks'}", "--label-mapping", "spider",
                "--grades", str(tmp_path / "grades.csv")]) == 0
    vols = _csv(c / "volumes.csv")
    assert len(vols) == 2 * (6 + 5)  # no sacrum label in SPIDER -> no S1, no L5-S1
    series = {r["scan_key"]: r for r in _csv(c / "series.csv")}
    for v in vols:
        assert v["levels_source"] == "labels" and v["level"] not in ("S1", "L5-S1")
    # grades: patient 1 L4-L5 (IVD label 2) = 3, L2-L3 (label 4) = 4; patient 2 L3-L4 (label 3) = 3
    by = {}
    for v in vols:
        if v["kind"] == "IVD":
            by.setdefault(v["scan_key"], {})[v["level"]] = v["grade"]
    got = sorted((d["L4-L5"], d["L3-L4"], d["L2-L3"], d["T12-L1"]) for d in by.values())
    assert got == sorted([("3", "3", "4", "4"), ("4", "3", "4", "4")])
    sv = load_volumes(c / vols[0]["file"])
    assert list(sv.vb_present) == [True] * 6 + [False]
    side = json.loads((c / "volumes" / f"{vols[0]['scan_key']}.json").read_text())
    assert any(s.startswith("S1:") for s in side["issues"])
    scans = _csv(c / "scans.csv")  # per-scan extraction manifest: what is missing and why
    assert [(r["status"], r["n_vb"], r["n_ivd"], r["missing"]) for r in scans] == [("ok", "6", "5", "S1 L5-S1")] * 2
    assert all("S1: no label for this level in the mapping" in r["issues"] for r in scans)
    assert all(series[v["scan_key"]]["format"] == "image" for v in vols)


def test_volume_file_bytes_do_not_depend_on_the_write_time(tmp_path, monkeypatch):
    """The same arrays written at two different times give the same file byte for byte (a re-run
    that rewrites a finished scan leaves it identical; zip members carry no write time)."""
    import time as _time

    from SpineSSLLib.extract.files import read_arrays, write_arrays

    rng = np.random.default_rng(0)
    arrays = {"vb": rng.random((2, 9, 8, 8)).astype(np.float16), "vb_present": np.ones(2, bool)}
    real = _time.time
    write_arrays(tmp_path / "a.npz", arrays)
    monkeypatch.setattr(_time, "time", lambda: real() + 3 * 86400 + 7)  # three days and 7 s later
    write_arrays(tmp_path / "b.npz", arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = read_arrays(tmp_path / "b.npz")
    np.testing.assert_array_equal(back["vb"], arrays["vb"])
