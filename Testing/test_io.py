"""io: DICOM header scan, geometry ordering, pixel reading, SimpleITK images, bad inputs."""

import os

import numpy as np
import pytest
from extract_phantom import phantom_scan, relabel_affine, sagittal_affine

from SpineSSLLib.errors import DicomError, GeometryError, ImageContentError, InputError
from SpineSSLLib.io import (Scan, read_dicom_series, read_header, read_scan, series_geometry,
                            to_sagittal_axes)
from SpineSSLLib.synth.dicom import write_series

HDR = {"PatientID": "PAT0042", "PatientName": "DOE^JANE", "StudyDate": "20140317",
       "SeriesDescription": "SAG T2 TSE", "EchoTime": "100", "MagneticFieldStrength": "1.5"}


def small_volume(shape=(6, 20, 16), seed=0):
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform(10, 1000, size=shape)).astype(np.float32)


def rotation_x(deg):
    t = np.radians(deg)
    r = np.eye(4)
    r[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def rotation_z(deg):
    t = np.radians(deg)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def test_roundtrip_array_and_affine(tmp_path):
    arr = small_volume()
    aff = sagittal_affine(arr.shape, (0.7, 0.8, 4.4))
    write_series(tmp_path / "s", arr, aff, HDR)
    scan = read_dicom_series(tmp_path / "s")
    assert scan.shape == arr.shape
    np.testing.assert_array_equal(scan.array, arr)
    np.testing.assert_allclose(scan.affine, aff, atol=1e-4)
    assert scan.meta["series_instance_uid"]
    # nothing identifying in the scan's meta
    assert not any(v in str(scan.meta) for v in ("PAT0042", "DOE", "20140317"))


def test_slices_ordered_by_geometry_not_names_or_instance_numbers(tmp_path):
    arr = small_volume()
    aff = sagittal_affine(arr.shape)
    # file names deliberately in the reverse of the slice order, no extension
    names = [f"z{9 - k}" for k in range(arr.shape[0])]
    write_series(tmp_path / "s", arr, aff, HDR, file_names=names)
    scan = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(scan.array, arr)


@pytest.mark.parametrize("ops", [dict(flip_k=True), dict(flip_i=True, flip_j=True),
                                 dict(transpose_ij=True, flip_k=True), dict(transpose_ij=True, flip_i=True)])
def test_reordered_flipped_copy_has_same_physical_content(tmp_path, ops):
    arr = small_volume()
    aff = sagittal_affine(arr.shape, (0.7, 0.8, 4.0))
    aff2, apply = relabel_affine(aff, arr.shape, **ops)
    write_series(tmp_path / "a", arr, aff, HDR)
    perm = np.random.default_rng(1).permutation(arr.shape[0])
    write_series(tmp_path / "b", apply(arr), aff2, HDR, file_names=[f"f{p}" for p in perm])
    a, b = read_dicom_series(tmp_path / "a"), read_dicom_series(tmp_path / "b")
    # every voxel centre of a is a voxel centre of b with the same value
    K, J, I = a.shape
    kk, jj, ii = np.meshgrid(np.arange(K), np.arange(J), np.arange(I), indexing="ij")
    ijk = np.stack([ii, jj, kk], -1).reshape(-1, 3)
    ijk_b = np.rint(b.lps_to_index(a.index_to_lps(ijk))).astype(int)
    np.testing.assert_allclose(b.lps_to_index(a.index_to_lps(ijk)), ijk_b, atol=1e-3)
    np.testing.assert_array_equal(b.array[ijk_b[:, 2], ijk_b[:, 1], ijk_b[:, 0]], a.array.reshape(-1))


def test_header_reading_skips_non_dicom_and_dicomdir(tmp_path):
    write_series(tmp_path, small_volume((2, 8, 8)), sagittal_affine((2, 8, 8)), HDR)
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / "empty").write_bytes(b"")
    assert read_header(tmp_path / "README.txt") is None
    assert read_header(tmp_path / "empty") is None
    h = read_header(tmp_path / "IM0001.dcm")
    assert h.rows == 8 and h.patient_id == "PAT0042" and h.echo_time == 100.0
    scan = read_dicom_series(tmp_path)  # the stray files are ignored
    assert scan.shape == (2, 8, 8)


def test_oblique_within_limit_is_read(tmp_path):
    arr = small_volume()
    aff = rotation_z(20) @ sagittal_affine(arr.shape)
    write_series(tmp_path / "s", arr, aff, HDR)
    scan = read_dicom_series(tmp_path / "s")
    assert scan.meta["obliquity_deg"] == pytest.approx(20, abs=0.01)


# ---- bad inputs: one test each ----------------------------------------------------------------

def test_truncated_dicom_pixels(tmp_path):
    paths = write_series(tmp_path, small_volume(), sagittal_affine(small_volume().shape), HDR)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-50])
    with pytest.raises(DicomError, match="truncated") as e:
        read_dicom_series(tmp_path)
    assert os.fspath(paths[2]) in str(e.value) and "\n" not in str(e.value)


def test_truncated_dicom_header(tmp_path):
    paths = write_series(tmp_path, small_volume(), sagittal_affine(small_volume().shape), HDR)
    paths[0].write_bytes(paths[0].read_bytes()[:300])
    with pytest.raises(DicomError, match="truncated or incomplete"):
        read_header(paths[0])


def test_missing_pixel_data(tmp_path):
    import pydicom

    paths = write_series(tmp_path, small_volume(), sagittal_affine(small_volume().shape), HDR)
    ds = pydicom.dcmread(paths[1])
    del ds.PixelData
    ds.save_as(paths[1])
    with pytest.raises(DicomError, match="missing pixel data"):
        read_dicom_series(tmp_path)


def test_mixed_series_in_one_folder(tmp_path):
    arr = small_volume()
    write_series(tmp_path, arr, sagittal_affine(arr.shape), HDR)
    write_series(tmp_path, arr + 1, sagittal_affine(arr.shape), HDR | {"SeriesDescription": "SAG T1"},
                 file_names=[f"other{k}" for k in range(arr.shape[0])])
    with pytest.raises(DicomError, match="mixed series"):
        read_dicom_series(tmp_path)


def test_mixed_geometry_within_one_series_uid(tmp_path):
    arr = small_volume()
    write_series(tmp_path, arr, sagittal_affine(arr.shape), HDR, series_uid="1.2.3.4", study_uid="1.2.3")
    write_series(tmp_path, small_volume((6, 24, 16)), sagittal_affine(arr.shape), HDR, series_uid="1.2.3.4",
                 study_uid="1.2.3", file_names=[f"x{k}" for k in range(6)])
    with pytest.raises(DicomError, match="mixed series"):
        read_dicom_series(tmp_path)


def test_non_sagittal_series(tmp_path):
    arr = small_volume()
    axial = np.eye(4)
    axial[:3, :3] = np.diag([0.7, 0.7, 4.0])
    write_series(tmp_path, arr, axial, HDR)
    with pytest.raises(GeometryError, match="not sagittal"):
        read_dicom_series(tmp_path)


def test_oblique_beyond_30_degrees(tmp_path):
    arr = small_volume()
    write_series(tmp_path, arr, rotation_z(35) @ sagittal_affine(arr.shape), HDR)
    with pytest.raises(GeometryError, match="oblique"):
        read_dicom_series(tmp_path)


def test_single_slice_series(tmp_path):
    write_series(tmp_path, small_volume((1, 20, 16)), sagittal_affine((1, 20, 16)), HDR)
    with pytest.raises(GeometryError, match="single-slice"):
        read_dicom_series(tmp_path)


def test_inconsistent_slice_spacing(tmp_path):
    arr = small_volume()
    aff = sagittal_affine(arr.shape)
    write_series(tmp_path, arr[:3], aff, HDR, series_uid="1.2.9", study_uid="1.2")
    aff2 = aff.copy()
    aff2[:3, 3] += aff[:3, 2] * 3.5  # a gap of 1.5 slices
    write_series(tmp_path, arr[3:], aff2, HDR, series_uid="1.2.9", study_uid="1.2",
                 file_names=[f"y{k}" for k in range(3)])
    with pytest.raises(GeometryError, match="inconsistent slice spacing"):
        read_dicom_series(tmp_path)


def test_constant_image(tmp_path):
    write_series(tmp_path, np.full((4, 10, 10), 7.0), sagittal_affine((4, 10, 10)), HDR)
    with pytest.raises(ImageContentError, match="constant"):
        read_dicom_series(tmp_path)


def _write_sitk(path, arr, affine):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    sp = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in sp])
    img.SetDirection([float(v) for v in (affine[:3, :3] / sp).reshape(-1)])
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    sitk.WriteImage(img, str(path))


def test_nan_image(tmp_path):
    arr = small_volume()
    arr[2, 3, 4] = np.nan
    _write_sitk(tmp_path / "nan.mha", arr, sagittal_affine(arr.shape))
    with pytest.raises(ImageContentError, match="NaN"):
        read_scan(tmp_path / "nan.mha")


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_sitk_formats_put_in_sagittal_axis_order(tmp_path, ext):
    scan, _ = phantom_scan(shape=(9, 64, 48), spacing=(2.0, 2.0, 4.0))
    # store it with axes permuted (x fastest is A-P here, slices L-R last) as a file would
    arr_perm = np.ascontiguousarray(np.transpose(scan.array, (1, 0, 2)))  # (J, K, I): k-axis is now 'y'
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = scan.affine[:3, 0], scan.affine[:3, 2], scan.affine[:3, 1]
    aff[:3, 3] = scan.affine[:3, 3]
    _write_sitk(tmp_path / f"v{ext}", arr_perm, aff)
    back = read_scan(tmp_path / f"v{ext}")
    assert back.shape == scan.shape
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    np.testing.assert_array_equal(back.array, scan.array)


def test_to_sagittal_axes_is_a_pure_relabelling():
    arr = small_volume((5, 7, 9))
    aff = np.eye(4)
    aff[:3, :3] = [[0, 0, 2.0], [1.0, 0, 0], [0, -1.5, 0]]  # already sagittal order
    s = Scan(arr, aff)
    same = to_sagittal_axes(s)
    np.testing.assert_array_equal(same.array, arr)
    axial = Scan(arr, np.diag([1.0, 1.5, 2.0, 1.0]))
    t = to_sagittal_axes(axial)  # i was x (L-R) -> becomes k
    assert t.shape == (9, 5, 7)
    p = np.array([3.0, 4.0, 2.0])  # ijk in the original
    val = arr[2, 4, 3]
    q = np.rint(t.lps_to_index(axial.index_to_lps(p))).astype(int)
    assert t.array[q[2], q[1], q[0]] == val


def test_read_scan_rejects_unknown_input(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError):
        read_scan(tmp_path / "x.txt")


def test_series_geometry_reports_gantry_tilt():
    arr = small_volume()
    aff = sagittal_affine(arr.shape)
    aff[:3, 2] = aff[:3, 2] + np.array([0, 1.0, 0])  # slices shifted in-plane: sheared stack
    from SpineSSLLib.io import DicomHeader

    hs = [DicomHeader(f"f{k}", "1.2", "1", "", "", "", "", None, None, None,
                      np.array([0, 1.0, 0, 0, 0, -1.0]), aff[:3, 3] + k * aff[:3, 2], np.array([1.0, 1.0]),
                      20, 16, k + 1, 4.0, 1) for k in range(5)]
    with pytest.raises(GeometryError, match="sheared"):
        series_geometry(hs, "series")


def test_axial_volume_file_is_not_sagittal(tmp_path):
    arr = small_volume()
    _write_sitk(tmp_path / "ax.nrrd", arr, np.diag([0.8, 0.8, 5.0, 1.0]))  # 5 mm axial slices
    with pytest.raises(GeometryError, match="not sagittal"):
        read_scan(tmp_path / "ax.nrrd")


def test_duplicate_copies_of_an_instance_are_ignored(tmp_path):
    import shutil

    arr = small_volume()
    paths = write_series(tmp_path, arr, sagittal_affine(arr.shape), HDR)
    shutil.copy(paths[2], tmp_path / "IM0003 (1).dcm")
    scan = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(scan.array, arr)
