"""Privacy audit: prove that nothing SpineSSL wrote carries an identifier from the source DICOM.

``audit_outputs(out_dir, source_root)`` collects identifying header values from every DICOM
file under ``source_root`` (PatientID, PatientName, birth date, study/series/acquisition dates,
AccessionNumber, institution and physician names) and searches every file under ``out_dir``
for them: raw bytes, plus the decompressed members of zip containers (``.npz``) and gzip files
(``.nii.gz``, ``.seg.nrrd`` with gzip encoding is searched raw), in the spellings a date or a
name commonly takes (``20140317``, ``2014-03-17``, ``2014/03/17``, ``17.03.2014``;
``DOE^JANE``, ``DOE JANE``, ``Jane Doe``).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

IDENTIFYING_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "StudyID",
)
DATE_TAGS = {"PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"}
NAME_TAGS = {"PatientName", "ReferringPhysicianName", "PerformingPhysicianName"}
MIN_LEN = 4  # shorter values (e.g. StudyID "1") cannot be searched for without false alarms


@dataclass
class Hit:
    file: str
    tag: str
    context: str


@dataclass
class AuditReport:
    n_source_files: int = 0
    n_values: int = 0
    n_output_files: int = 0
    hits: list[Hit] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.hits


def _spellings(tag: str, value: str) -> set[str]:
    value = value.strip()
    out = {value} if len(value) >= MIN_LEN else set()
    if tag in DATE_TAGS and re.fullmatch(r"\d{8}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        out |= {f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}"}
    if tag in NAME_TAGS and "^" in value:
        parts = [p for p in value.split("^") if p]
        out |= {" ".join(parts), ", ".join(parts)}
        if len(parts) >= 2:
            out.add(f"{parts[1]} {parts[0]}")
        out |= {p for p in parts if len(p) >= MIN_LEN}
    return {s for s in out if len(s) >= MIN_LEN}


def collect_identifiers(source_root: str | os.PathLike) -> tuple[dict[str, str], int]:
    """Map each searchable spelling (lower-case) to the tag it came from; also the file count."""
    import pydicom

    values: dict[str, str] = {}
    n = 0
    for path in sorted(Path(source_root).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTIFYING_TAGS))
        except Exception:
            continue
        if "SOPClassUID" not in ds and "PatientID" not in ds:
            continue
        n += 1
        for tag in IDENTIFYING_TAGS:
            v = ds.get(tag)
            if v is None or v == "":
                continue
            items = v if isinstance(v, pydicom.multival.MultiValue) else [v]
            for item in items:
                for s in _spellings(tag, str(item)):
                    values[s.lower()] = tag
    return values, n


def _payloads(path: Path):
    data = path.read_bytes()
    yield data
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for name in z.namelist():
                yield name.encode()
                yield z.read(name)
    elif data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":  # compressed text chunks (zTXt, iTXt)
        pos = 8
        while pos + 8 <= len(data):
            ln = int.from_bytes(data[pos:pos + 4], "big")
            kind = data[pos + 4:pos + 8]
            chunk = data[pos + 8:pos + 8 + ln]
            if kind == b"zTXt":
                key, _, rest = chunk.partition(b"\0")
                try:
                    yield key + b" " + zlib.decompress(rest[1:])
                except zlib.error:
                    pass
            pos += 12 + ln


def audit_outputs(out_dir: str | os.PathLike, source_root: str | os.PathLike) -> AuditReport:
    from .errors import InputError

    out_dir, source_root = Path(out_dir), Path(source_root)
    for p in (out_dir, source_root):
        if not p.is_dir():
            raise InputError("not a folder", p)
    values, n_src = collect_identifiers(source_root)
    if n_src == 0:
        raise InputError("no DICOM files found to take identifiers from", source_root)
    report = AuditReport(n_source_files=n_src, n_values=len(values))
    if not values:
        return report
    # numpy stores str arrays as UTF-32, Windows tools write UTF-16: search those byte forms too.
    # One pass per payload: every spelling in every encoding goes into one prefix-tree regex,
    # matched against the ASCII-lower-cased bytes (an IGNORECASE alternation of ~100 literals ran
    # at ~0.5 MB/s; this runs at tens of MB/s, so a cohort's volumes are audited in seconds).
    needles: dict[bytes, tuple[str, str]] = {}
    for enc in ("utf-32-le", "utf-16-le", "utf-8"):
        for v in values:
            needles.setdefault(v.encode(enc).lower(), (v, enc))
    pattern = re.compile(_trie_regex(list(needles)))
    src_resolved = source_root.resolve()
    for path in sorted(out_dir.rglob("*")):
        if not path.is_file() or src_resolved in path.resolve().parents:
            continue
        report.n_output_files += 1
        try:
            for payload in _payloads(path):
                for m in pattern.finditer(payload.lower()):
                    found, enc = needles[m.group(0)]
                    w = 20 * len("a".encode(enc))
                    ctx = payload[max(0, m.start() - w):m.end() + w].decode(enc, errors="replace")
                    report.hits.append(Hit(str(path.relative_to(out_dir)), values.get(found, "?"),
                                           ctx.replace("\n", " ").replace("\0", "")))
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            report.unreadable.append(f"{path}: {type(e).__name__}")
    return report


def _trie_regex(words: list[bytes]) -> bytes:
    """A regex matching any of ``words`` (longest first at a position), factored into a prefix
    tree so the engine tests one byte per level instead of every word at every position."""
    trie: dict = {}
    for w in words:
        node = trie
        for b in w:
            node = node.setdefault(b, {})
        node[None] = {}

    def build(node: dict) -> bytes | None:
        branches, leaves = [], []
        for k in sorted(k for k in node if k is not None):
            sub = build(node[k])
            if sub is None:
                leaves.append(k)
            else:
                branches.append(re.escape(bytes([k])) + sub)
        if leaves:
            branches.append(re.escape(bytes(leaves)) if len(leaves) == 1 else
                            b"[" + b"".join(re.escape(bytes([c])) for c in leaves) + b"]")
        if not branches:
            return None
        body = branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"
        return b"(?:" + body + b")?" if None in node else body

    return build(trie) or b"(?!)"

