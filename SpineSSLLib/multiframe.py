"""Multi-frame DICOM: Enhanced MR and Legacy Converted Enhanced MR images (one file per series).

A multi-frame file keeps the geometry of each frame in functional groups instead of top-level
attributes (DICOM PS3.3 C.7.6.16): per frame in ``PerFrameFunctionalGroupsSequence``, or once
for all frames in ``SharedFunctionalGroupsSequence`` (per-frame values win).  Read here:

- ImagePositionPatient (Plane Position), ImageOrientationPatient (Plane Orientation),
  PixelSpacing and SliceThickness (Pixel Measures);
- RescaleSlope/RescaleIntercept (Pixel Value Transformation; else the top-level ones);
- the echo time (MR Echo ``EffectiveEchoTime``; else ``EchoTime`` from the Unassigned
  Converted Attributes of legacy-converted files or the top level) and ``StackID`` (Frame Content).

``io.read_header`` hands such a file to ``multiframe_header``, which returns the file's header
with one ``FrameHeader`` per frame.  ``expand_frames`` replaces it by its frame headers, so the
rest of the pipeline (series grouping, ``io.series_geometry``) sees one header per image plane,
as for a single-frame series.  One file may hold several stacks (orientations, echoes,
``StackID``s): frames are grouped into stacks and each stack is a candidate series of its own;
``choose_stack`` picks the one that is read (a sagittal stack within the obliquity limit, most
frames first), the same way in ``index`` and in ``extract``.

Only ``Dataset`` attribute access and ``Dataset.pixel_array`` are used, so pydicom 2.4 (Slicer
5.10) and pydicom 3 behave the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .errors import DicomError, GeometryError
from .io.dicom import DicomHeader, _float, _vec
from .io.pixels import decode, rescale

ORIENTATION_TOL = 1e-3  # frames whose ImageOrientationPatient differ by more belong to different stacks


@dataclass
class FrameHeader(DicomHeader):
    """One frame of a multi-frame file (``path`` is the file, ``frame`` the 0-based frame index)."""

    frame: int = 0
    stack: str = ""  # stack label within its series; "" when the file holds one stack
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0


@dataclass
class MultiFrameHeader(DicomHeader):
    """Header of a multi-frame file: the file-level facts plus one ``FrameHeader`` per frame."""

    frame_headers: list = field(default_factory=list)


def _item(ds, keyword: str):
    """First item of a functional-group sequence, or ``None``."""
    if ds is None:
        return None
    seq = ds.get(keyword)
    try:
        return seq[0] if seq is not None and len(seq) else None
    except (TypeError, IndexError):
        return None


def _group_value(items, sequence: str, attribute: str):
    """``attribute`` from the first of ``items`` (functional-group items, per-frame first) whose
    ``sequence`` holds it."""
    for it in items:
        sub = _item(it, sequence)
        if sub is not None and attribute in sub:
            v = sub.get(attribute)
            if v is not None and v != "":
                return v
    return None


def _echo_time(items, ds) -> float | None:
    te = _float(_group_value(items, "MREchoSequence", "EffectiveEchoTime"))
    if te is None:
        for it in items:
            for seq in ("UnassignedPerFrameConvertedAttributesSequence", "UnassignedSharedConvertedAttributesSequence"):
                sub = _item(it, seq)
                if sub is not None and sub.get("EchoTime") not in (None, ""):
                    te = _float(sub.get("EchoTime"))
                    if te is not None:
                        return te
    return te if te is not None else _float(ds.get("EchoTime"))


def multiframe_header(ds, header: DicomHeader) -> MultiFrameHeader:
    """The header of a multi-frame file, with one ``FrameHeader`` per frame.

    Raises ``DicomError`` naming the file when the per-frame geometry is missing or does not
    match the number of frames, or when two frames of one stack lie at the same position
    (dynamic, diffusion or other series with repeated positions)."""
    path = header.path
    n = header.frames
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        raise DicomError(f"multi-frame image ({n} frames) without per-frame geometry "
                         f"(no PerFrameFunctionalGroupsSequence)", path)
    if len(per_frame) != n:
        raise DicomError(f"PerFrameFunctionalGroupsSequence has {len(per_frame)} items for {n} frames", path)
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    top_slope, top_icpt = _float(ds.get("RescaleSlope")), _float(ds.get("RescaleIntercept"))
    frames = []
    for i, item in enumerate(per_frame):
        items = (item, shared)
        ipp = _vec(_group_value(items, "PlanePositionSequence", "ImagePositionPatient"), 3)
        iop = _vec(_group_value(items, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ps = _vec(_group_value(items, "PixelMeasuresSequence", "PixelSpacing"), 2)
        for name, v, seq in (("ImagePositionPatient", ipp, "PlanePositionSequence"),
                             ("ImageOrientationPatient", iop, "PlaneOrientationSequence"),
                             ("PixelSpacing", ps, "PixelMeasuresSequence")):
            if v is None:
                raise DicomError(f"multi-frame image: frame {i + 1} of {n} has no valid {name} "
                                 f"({seq} in the per-frame or shared functional groups)", path)
        slope = _float(_group_value(items, "PixelValueTransformationSequence", "RescaleSlope"))
        icpt = _float(_group_value(items, "PixelValueTransformationSequence", "RescaleIntercept"))
        thick = _float(_group_value(items, "PixelMeasuresSequence", "SliceThickness"))
        stack_id = _group_value(items, "FrameContentSequence", "StackID")
        frames.append(FrameHeader(**{
            **{f.name: getattr(header, f.name) for f in dataclasses.fields(DicomHeader)},
            "ipp": ipp, "iop": iop, "pixel_spacing": ps, "frames": 1, "instance_number": i + 1,
            "slice_thickness": thick if thick is not None else header.slice_thickness,
            "echo_time": _echo_time(items, ds),
            "sop_uid": f"{header.sop_uid}#{i + 1}", "frame": i,
            "rescale_slope": slope if slope is not None else (top_slope if top_slope is not None else 1.0),
            "rescale_intercept": icpt if icpt is not None else (top_icpt or 0.0),
            "stack": "" if stack_id is None else f"id{str(stack_id).strip()}",
        }))
    _label_stacks(frames, path)
    f0 = frames[0]
    return MultiFrameHeader(**{
        **{f.name: getattr(header, f.name) for f in dataclasses.fields(DicomHeader)},
        "iop": f0.iop, "ipp": f0.ipp, "pixel_spacing": f0.pixel_spacing, "echo_time": f0.echo_time,
        "slice_thickness": f0.slice_thickness, "frame_headers": frames,
    })


def _label_stacks(frames: list, path: str) -> None:
    """Group the frames of one file into stacks (StackID, orientation, echo time) and label them:
    "" when there is one stack, else "1", "2"... in order of first appearance."""
    keys: list[tuple] = []  # (stack id, orientation, echo time)
    of = []
    for f in frames:
        te = None if f.echo_time is None else round(f.echo_time, 2)
        for idx, (sid, iop, t) in enumerate(keys):
            if sid == f.stack and t == te and np.max(np.abs(iop - f.iop)) <= ORIENTATION_TOL:
                break
        else:
            keys.append((f.stack, f.iop, te))
            idx = len(keys) - 1
        of.append(idx)
    for f, idx in zip(frames, of):
        f.stack = "" if len(keys) == 1 else str(idx + 1)
    for idx in range(len(keys)):
        members = [f for f, j in zip(frames, of) if j == idx]
        seen: dict[tuple, int] = {}
        for f in members:
            p = tuple(np.round(f.ipp, 3))
            if p in seen:
                where = "" if len(keys) == 1 else f" of stack {idx + 1}"
                raise DicomError(f"multi-frame image: frames {seen[p] + 1} and {f.frame + 1}{where} lie at the "
                                 f"same position (dynamic, diffusion or repeated acquisitions are not supported)",
                                 path)
            seen[p] = f.frame


def is_multiframe(ds, frames: int) -> bool:
    """Whether a dataset is read through its functional groups (any frame count)."""
    return frames > 1 or "PerFrameFunctionalGroupsSequence" in ds


def expand_frames(headers: list) -> list:
    """Replace every multi-frame file header by its frame headers (others unchanged)."""
    out = []
    for h in headers:
        out.extend(h.frame_headers if isinstance(h, MultiFrameHeader) else [h])
    return out


def stacks(headers: list) -> dict[str, list]:
    """Headers (after ``expand_frames``) grouped by stack label ("" for single-frame files)."""
    out: dict[str, list] = {}
    for h in headers:
        out.setdefault(getattr(h, "stack", ""), []).append(h)
    return out


def where_of(headers: list, default=None):
    """The file when all headers come from one file (multi-frame), else ``default``."""
    paths = {h.path for h in headers}
    return next(iter(paths)) if len(paths) == 1 and isinstance(headers[0], FrameHeader) else default


def choose_stack(groups: dict[str, list], where, spacing_tol: float = 0.05,
                 max_oblique_deg: float | None = 30.0) -> str:
    """Label of the stack that is read from a series split into stacks: of the stacks whose
    geometry is valid and sagittal within ``max_oblique_deg``, the one with the most frames
    (ties: the longest echo time, i.e. the T2 echo of a dual-echo series; then the first label).
    One stack: its label.  None usable: ``GeometryError`` listing why."""
    from .errors import SpineSSLError
    from .io.geometry import series_geometry

    if len(groups) == 1:
        return next(iter(groups))
    ok, why = [], []
    for label, hs in groups.items():
        try:
            series_geometry(hs, where, spacing_tol=spacing_tol, max_oblique_deg=max_oblique_deg)
            ok.append((-len(hs), -(hs[0].echo_time or 0.0), _label_order(label), label))
        except SpineSSLError as e:
            why.append(f"stack {label}: {e.cause}")
    if not ok:
        raise GeometryError(f"none of the {len(groups)} stacks of this multi-frame series is usable ("
                            + "; ".join(why) + ")", where)
    return min(ok)[-1]


def _label_order(label: str):
    return (0, int(label)) if label.isdigit() else (1, label)


def frame_pixels(h: FrameHeader, cache: dict) -> np.ndarray:
    """Rescaled pixels (float32) of one frame; each file's frames are decoded once (``cache``)."""
    if h.path not in cache:
        cache[h.path] = read_frames(h.path)
    frames = cache[h.path]
    if h.frame >= len(frames):
        raise DicomError(f"pixel data holds {len(frames)} frames, frame {h.frame + 1} is missing", h.path)
    return rescale(frames[h.frame], h.rescale_slope, h.rescale_intercept)


def read_frames(path: str) -> np.ndarray:
    """Stored pixel values of every frame, shape (frames, rows, columns) (``io.pixels.decode``)."""
    ds, px = decode(path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    px = np.asarray(px)
    if px.ndim == 2:
        px = px[None]
    if px.ndim != 3 or px.shape[0] != n:
        raise DicomError(f"pixel data shape {px.shape} does not match NumberOfFrames {n}", path)
    return px


def files_of(headers: list) -> list[str]:
    """Distinct file paths of a list of headers, in first-seen order."""
    return list(dict.fromkeys(h.path for h in headers))


__all__ = ["FrameHeader", "MultiFrameHeader", "multiframe_header", "expand_frames", "stacks", "choose_stack",
           "frame_pixels", "read_frames", "files_of", "where_of", "is_multiframe"]
