"""SpineSSLLib.synth.dicom.write_series: real MR DICOM series whose geometry round-trips."""

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from SpineSSLLib.errors import ConfigError
from SpineSSLLib.synth.anatomy import axis_rotation as _rot
from SpineSSLLib.synth.dicom import MR_IMAGE_STORAGE, write_series


def _affine(cols, spacing, origin):
    A = np.eye(4)
    A[:3, :3] = np.asarray(cols, float).T * np.asarray(spacing, float)
    A[:3, 3] = origin
    return A


SAGITTAL = _affine([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], [0.6, 0.7, 4.4], [12.0, -150.0, 140.0])
SAGITTAL_FLIPPED = _affine([[0, 1, 0], [0, 0, -1], [1, 0, 0]], [0.6, 0.7, 4.4], [-20.0, -150.0, 140.0])
AXIAL = _affine([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0.8, 0.8, 3.0], [-100.0, -90.0, -30.0])
_R = _rot(0, 7) @ _rot(1, -5) @ _rot(2, 11)
OBLIQUE = _affine((_R @ np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]).T).T, [0.5, 0.5, 3.3], [5.0, -120.0, 100.0])


def _volume(shape=(5, 24, 32), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, shape).astype(np.float32)


def _sitk_read(folder):
    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


@pytest.mark.parametrize("affine", [SAGITTAL, SAGITTAL_FLIPPED, AXIAL, OBLIQUE], ids=["sag", "sag-flipped", "axial", "oblique"])
def test_geometry_and_pixels_round_trip_through_pydicom_and_simpleitk(tmp_path, affine):
    arr = _volume()
    paths = write_series(tmp_path, arr, affine, {"PatientID": "ANON1", "MagneticFieldStrength": "1.5"})
    assert [p.name for p in paths] == [f"IM{k:04d}.dcm" for k in range(1, 6)]
    K, J, I = arr.shape
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == MR_IMAGE_STORAGE and ds.Modality == "MR"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], affine[:3, 3] + k * affine[:3, 2], atol=1e-3)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        np.testing.assert_allclose(iop[:3], affine[:3, 0] / np.linalg.norm(affine[:3, 0]), atol=1e-6)
        np.testing.assert_allclose(iop[3:], affine[:3, 1] / np.linalg.norm(affine[:3, 1]), atol=1e-6)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing],
                                   [np.linalg.norm(affine[:3, 1]), np.linalg.norm(affine[:3, 0])], rtol=1e-6)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(np.linalg.norm(affine[:3, 2]), rel=1e-6)
        assert (ds.Rows, ds.Columns) == (J, I)
        pix = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(pix, arr[k])
        assert ds.PatientID == "ANON1" and float(ds.MagneticFieldStrength) == 1.5
    img = _sitk_read(tmp_path)
    back = sitk.GetArrayFromImage(img)
    assert back.shape == arr.shape
    # every voxel lands at the same physical point with the same value
    for k in (0, K - 1):
        for (i, j) in ((0, 0), (I - 1, 0), (3, J - 1)):
            lps = affine[:3, :3] @ [i, j, k] + affine[:3, 3]
            idx = np.round(img.TransformPhysicalPointToContinuousIndex(lps.tolist())).astype(int)
            assert back[idx[2], idx[1], idx[0]] == arr[k, j, i]


def test_float_pixels_are_rescaled_within_half_a_step(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(0.5, 0.2, (3, 10, 12)).astype(np.float32)
    paths = write_series(tmp_path, arr, SAGITTAL)
    ds = pydicom.dcmread(paths[1])
    slope = float(ds.RescaleSlope)
    assert ds.PixelRepresentation == 0 and ds.BitsAllocated == 16
    np.testing.assert_allclose(ds.pixel_array * slope + float(ds.RescaleIntercept), arr[1], atol=slope * 0.51)


def test_negative_integers_use_signed_pixels(tmp_path):
    arr = np.arange(-60, 60, dtype=np.int32).reshape(2, 6, 10)
    paths = write_series(tmp_path, arr, AXIAL)
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array, arr[0])


def test_same_input_gives_byte_identical_files_and_custom_names(tmp_path):
    arr = _volume((3, 8, 8))
    a = write_series(tmp_path / "a", arr, SAGITTAL, {"PatientID": "X"}, file_names=["s1", "s2", "s3"])
    b = write_series(tmp_path / "b", arr, SAGITTAL, {"PatientID": "X"}, file_names=["s1", "s2", "s3"])
    assert [p.name for p in a] == ["s1", "s2", "s3"]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    c = write_series(tmp_path / "c", arr, SAGITTAL, {"PatientID": "X"}, series_uid="1.2.3.4", study_uid="1.2.3")
    ds = pydicom.dcmread(c[0])
    assert ds.SeriesInstanceUID == "1.2.3.4" and ds.StudyInstanceUID == "1.2.3"
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in c}) == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(array=np.zeros((4, 4))), "3D"),
    (dict(affine=np.eye(3)), "4x4"),
    (dict(header={"ImagePositionPatient": [0, 0, 0]}), "derived"),
    (dict(header={"NotAKeyword": 1}), "not a DICOM keyword"),
    (dict(file_names=["a", "a"]), "distinct"),
    (dict(array=np.full((2, 4, 4), np.nan)), "NaN"),
    (dict(affine=_affine([[1, 0, 0], [1, 1, 0], [0, 0, 1]], [1, 1, 1], [0, 0, 0])), "orthogonal"),
])
def test_bad_input_raises_config_error(tmp_path, kwargs, match):
    args = dict(array=np.ones((2, 4, 4)), affine=AXIAL, header=None)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        write_series(tmp_path, args["array"], args["affine"], args["header"], file_names=args.get("file_names"))
    assert not any(tmp_path.iterdir())
