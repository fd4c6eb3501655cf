"""Build multi-frame DICOM files from single-frame MR series for the multi-frame tests.

``legacy_convert`` uses highdicom's ``LegacyConvertedEnhancedMRImage`` (what Slicer 5.12 bundles:
highdicom 0.27), which copies position, orientation and pixel measures into the functional
groups.  highdicom 0.27 adds a Pixel Value Transformation functional group for CT only, so the
MR rescale of the source images would be lost: each frame gets its source image's
RescaleSlope/RescaleIntercept in a per-frame ``PixelValueTransformationSequence`` (where Philips
and Siemens enhanced MR files keep them), matched through the frame's Conversion Source
reference.  It also copies the first image's orientation into the shared groups whatever the
others hold, so files with several orientations get a per-frame Plane Orientation instead.
``as_enhanced_mr`` rewrites a converted file the way native Enhanced MR files carry
the echo time (MR Echo functional group, ``EffectiveEchoTime``: shared, or per frame when the
file holds several echoes)."""

from __future__ import annotations

from pathlib import Path

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def read_series(files) -> list:
    import pydicom

    return [pydicom.dcmread(str(f)) for f in files]


def legacy_convert(datasets, out_path, stack_ids=None, series_uid=None):
    """Write ``datasets`` (single-frame MR images) as one Legacy Converted Enhanced MR file.

    ``stack_ids``: optional SOPInstanceUID -> StackID put in each frame's Frame Content."""
    import highdicom as hd
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    ref = datasets[0]
    mf = LegacyConvertedEnhancedMRImage(
        list(datasets), series_instance_uid=series_uid or ref.SeriesInstanceUID,
        series_number=int(ref.get("SeriesNumber", 1) or 1), sop_instance_uid=hd.UID(), instance_number=1)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    # highdicom 0.27 copies the first image's orientation into the shared groups: several
    # orientations (stacks) in one file need it per frame
    per_frame_iop = len({tuple(float(v) for v in ds.ImageOrientationPatient) for ds in datasets}) > 1
    shared = mf.SharedFunctionalGroupsSequence[0]
    if per_frame_iop and "PlaneOrientationSequence" in shared:  # 0.28 already writes it per frame
        del shared.PlaneOrientationSequence
    # highdicom 0.28 appends " (enhanced conversion)" to the description; the tests compare what
    # is read from a copy with the original, so the copy keeps the source's description
    if "SeriesDescription" in ref:
        mf.SeriesDescription = ref.SeriesDescription
    for item in mf.PerFrameFunctionalGroupsSequence:
        src = by_uid[str(item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID)]
        if per_frame_iop and "PlaneOrientationSequence" not in item:
            po = pydicom.Dataset()
            po.ImageOrientationPatient = src.ImageOrientationPatient
            item.PlaneOrientationSequence = [po]
        pvt = pydicom.Dataset()
        pvt.RescaleSlope = src.get("RescaleSlope", "1")
        pvt.RescaleIntercept = src.get("RescaleIntercept", "0")
        pvt.RescaleType = "US"
        item.PixelValueTransformationSequence = [pvt]
        if stack_ids is not None:
            item.FrameContentSequence[0].StackID = stack_ids[str(src.SOPInstanceUID)]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mf.save_as(str(out_path))
    return out_path


def as_enhanced_mr(path, out_path):
    """A copy of a converted file with the Enhanced MR SOP class and the echo time in the shared
    MR Echo functional group (``EffectiveEchoTime``) instead of the unassigned attributes."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    shared = ds.SharedFunctionalGroupsSequence[0]
    un = shared.get("UnassignedSharedConvertedAttributesSequence")
    shared_te = None
    if un and "EchoTime" in un[0]:
        shared_te = un[0].EchoTime
        del un[0].EchoTime
    per_frame = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        un = item.get("UnassignedPerFrameConvertedAttributesSequence")
        te = shared_te
        if un and "EchoTime" in un[0]:
            te = un[0].EchoTime
            del un[0].EchoTime
        per_frame.append(te)
    if len({float(t) for t in per_frame if t is not None}) > 1:  # several echoes: per frame
        for item, te in zip(ds.PerFrameFunctionalGroupsSequence, per_frame):
            echo = pydicom.Dataset()
            echo.EffectiveEchoTime = te
            item.MREchoSequence = [echo]
    elif per_frame and per_frame[0] is not None:
        echo = pydicom.Dataset()
        echo.EffectiveEchoTime = per_frame[0]
        shared.MREchoSequence = [echo]
    ds.SOPClassUID = ENHANCED_MR
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(out_path))
    return Path(out_path)


def edit(path, out_path, fn):
    """Copy a DICOM file through ``fn(dataset)`` (for bad-input tests)."""
    import pydicom

    ds = pydicom.dcmread(str(path))
    fn(ds)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(out_path))
    return Path(out_path)
