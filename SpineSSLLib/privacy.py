"""Privacy audit: prove that nothing SpineSSL wrote carries an identifier from the source DICOM.

``audit_outputs(out_dir, source_root)`` collects identifying header values from every DICOM
file under ``source_root`` (PatientID, PatientName, birth date, study/series/acquisition dates,
AccessionNumber, institution and physician names) and searches every file under ``out_dir``
for them: raw bytes, plus the decompressed members of zip containers (``.npz``; Zstandard
``.zst`` members of volume files decompressed too) and gzip files
(``.nii.gz``, ``.seg.nrrd`` with gzip encoding is searched raw), in the spellings a date or a
name commonly takes (``20140317``, ``2014-03-17``, ``2014/03/17``, ``17.03.2014``;
``DOE^JANE``, ``DOE JANE``, ``Jane Doe``).  A value counts only as a whole token (not inside a
longer word or number: the name part ``Holdout`` is not found in ``HoldoutMed``, ``test`` not in
``dicomdirtests``); each hit names its file and where in it (CSV column and line, JSON key, zip
member, text line).  Header fields that are meant to be output (``allow``: e.g. Manufacturer,
MagneticFieldStrength) excuse a hit that lies inside one of their values (a pydicom test file
whose InstitutionName ``TOSHIBA`` is part of its Manufacturer ``TOSHIBA_MEC``).

Also the redaction helpers every stage uses on messages and paths (``identifiers``, ``redact``,
``redact_error``) and the cohort's salted pseudonymous keys (``load_or_create_salt``,
``salted_key``, ``file_hash``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import secrets
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Pseudonymous keys
# --------------------------------------------------------------------------------------------

SALT_FILE = "cohort_salt.txt"


def load_or_create_salt(cohort_dir) -> str:
    """The cohort's private salt (``C/cohort_salt.txt``), drawn on first use.  Safe when several
    shards start at once: the file is created exclusively (a hard link of a complete temporary
    file), so every process ends up with the one salt that won."""
    import tempfile

    from .atomic import current_umask
    from .errors import ManifestError

    p = Path(cohort_dir) / SALT_FILE
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{SALT_FILE}.", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secrets.token_hex(16) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~current_umask())
            try:
                os.link(tmp, p)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: rename (last writer wins)
                if not p.exists():
                    os.replace(tmp, p)
        finally:
            Path(tmp).unlink(missing_ok=True)
    salt = p.read_text(encoding="utf-8").strip()
    if len(salt) < 16:
        raise ManifestError("salt file is damaged (too short)", p)
    return salt


def salt_id(salt: str) -> str:
    """A public fingerprint of a salt (to tell whether two shards share one; not the salt)."""
    return hashlib.sha256(f"spinessl-salt-id\x00{salt}".encode("utf-8")).hexdigest()[:16]


def salted_key(salt: str, value: str, prefix: str = "", n: int = 16) -> str:
    return prefix + hashlib.sha256(f"{salt}\x00{value}".encode("utf-8")).hexdigest()[:n]


def file_hash(salt: str, relpath: str) -> str:
    return salted_key(salt, "file:" + relpath.replace(os.sep, "/"), n=24)


# --------------------------------------------------------------------------------------------
# Redaction of messages and paths
# --------------------------------------------------------------------------------------------

def identifiers(headers) -> set[str]:
    """Identifying strings (PatientID, PatientName and its parts, dates) to redact from messages."""
    out = set()
    for h in headers:
        for v in (h.patient_id, h.patient_name, h.study_date, getattr(h, "birth_date", "")):
            v = (v or "").strip()
            if len(v) >= 3:
                out.add(v)
        for part in re.split(r"[\^ ,]+", h.patient_name or ""):
            if len(part) >= 3:
                out.add(part)
    return out


def redact(text: str, secrets_: set[str], words: bool = False) -> str:
    """Replace identifiers by ``<redacted>`` (anywhere in ``text``: use for paths).  With
    ``words`` (for messages SpineSSL wrote, such as an error's cause) purely alphabetic ones
    (name parts such as 'DOE') are replaced only where they are not inside a longer word, so
    "does" stays readable."""
    for s in sorted(secrets_, key=len, reverse=True):
        pat = re.escape(s)
        if words and s.isalpha():
            pat = rf"(?<![^\W\d_]){pat}(?![^\W\d_])"
        text = re.sub(pat, "<redacted>", text, flags=re.IGNORECASE)
    return text


def redact_error(e, secrets_: set[str]) -> str:
    """``str(e)`` of a ``SpineSSLError`` with identifiers redacted: its path anywhere, its cause
    word-wise (see ``redact``)."""
    cause = redact(e.cause, secrets_, words=True)
    return f"{redact(e.path, secrets_)}: {cause}" if e.path else cause


# --------------------------------------------------------------------------------------------
# Output audit
# --------------------------------------------------------------------------------------------

IDENTIFYING_TAGS = (
    "PatientID", "PatientName", "PatientBirthDate", "OtherPatientIDs", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "AccessionNumber", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "StudyID", "PatientAge",
)
DATE_TAGS = {"PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"}
NAME_TAGS = {"PatientName", "ReferringPhysicianName", "PerformingPhysicianName"}
MIN_LEN = 4  # shorter values (e.g. StudyID "1") cannot be searched for without false alarms
ALIASES = {"field_strength": "MagneticFieldStrength", "fieldstrength": "MagneticFieldStrength"}
_ENCODINGS = ("utf-32-le", "utf-16-le", "utf-8")
_WIDTH = {"utf-32-le": 4, "utf-16-le": 2, "utf-8": 1}


@dataclass
class Hit:
    file: str
    tag: str
    context: str
    where: str = ""  # "column manufacturer, line 3", "key \"message\", line 7", "member ids.npy", "line 2"
    column: str = ""  # CSV column or JSON key that holds the value, when the file is a table


@dataclass
class AuditReport:
    n_source_files: int = 0
    n_values: int = 0
    n_output_files: int = 0
    hits: list[Hit] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    allowed_fields: list[str] = field(default_factory=list)
    n_excused: int = 0  # matches inside a value of an allowed field

    @property
    def ok(self) -> bool:
        return not self.hits


def allowed_keywords(names) -> list[str]:
    """DICOM keywords of the header fields a user declares as meant to be output (case-insensitive;
    ``field_strength`` = MagneticFieldStrength).  An unknown name is a ``ConfigError``."""
    from pydicom.datadict import keyword_dict

    from .errors import ConfigError

    lower = {k.lower(): k for k in keyword_dict}
    out = []
    for n in names or ():
        n = n.strip()
        if not n:
            continue
        k = ALIASES.get(n.lower()) or lower.get(n.lower())
        if k is None:
            raise ConfigError(f"--allow: {n!r} is not a DICOM keyword (e.g. Manufacturer, MagneticFieldStrength)")
        if k not in out:
            out.append(k)
    return out


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


def _collect(source_root, allow=()) -> tuple[dict[str, str], set[str], int]:
    import pydicom

    values: dict[str, str] = {}
    allowed: set[str] = set()
    n = 0
    for path in sorted(Path(source_root).rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=list(IDENTIFYING_TAGS) + list(allow))
        except Exception:
            continue
        if "SOPClassUID" not in ds and "PatientID" not in ds:
            continue
        n += 1
        for tag in (*IDENTIFYING_TAGS, *allow):
            v = ds.get(tag)
            if v is None or v == "":
                continue
            items = v if isinstance(v, pydicom.multival.MultiValue) else [v]
            for item in items:
                if tag in allow:
                    if str(item).strip():
                        allowed.add(str(item).strip().lower())
                    continue
                for s in _spellings(tag, str(item)):
                    values[s.lower()] = tag
    return values, allowed, n


def collect_identifiers(source_root: str | os.PathLike) -> tuple[dict[str, str], int]:
    """Map each searchable spelling (lower-case) to the tag it came from; also the file count."""
    values, _, n = _collect(source_root)
    return values, n


def _payloads(path: Path):
    """(member name or "", bytes) of a file: itself, zip members, gzip contents, PNG text."""
    data = path.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        # a zip is searched by its parts, not its raw bytes: compressed members are noise in which
        # a short value (an age such as "047Y") turns up by chance in a few MB (a false alarm
        # seen on a volume file); every part that can hold text is searched
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            yield "zip comment", z.comment
            for info in z.infolist():
                name = info.filename
                yield "member names", name.encode() + b" " + info.extra + b" " + info.comment
                member = z.read(name)
                if name.endswith(".zst"):  # volume files' Zstandard members (issue #17): decompressed
                    import zstandard

                    try:
                        member = zstandard.ZstdDecompressor().decompress(member)
                    except zstandard.ZstdError as e:
                        raise EOFError(f"zip member {name}: {e}") from None
                yield name, _npy_text(member) if name.endswith((".npy", ".npy.zst")) else member
        return
    yield "", data
    if data[:2] == b"\x1f\x8b":
        yield "gzip contents", gzip.decompress(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n":  # compressed text chunks (zTXt, iTXt)
        pos = 8
        while pos + 8 <= len(data):
            ln = int.from_bytes(data[pos:pos + 4], "big")
            kind = data[pos + 4:pos + 8]
            chunk = data[pos + 8:pos + 8 + ln]
            if kind == b"zTXt":
                key, _, rest = chunk.partition(b"\0")
                try:
                    yield "PNG text", key + b" " + zlib.decompress(rest[1:])
                except zlib.error:
                    pass
            pos += 12 + ln


def _npy_text(member: bytes) -> bytes:
    """The part of a ``.npy`` member that can hold text: its header, plus the data when the array
    is not numeric (strings, objects).  Numbers (pixel volumes, affines, flags) cannot spell an
    identifier except by chance, so their data is not searched; an unreadable header -> all of it."""
    import numpy as np

    f = io.BytesIO(member)
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        dtype = read(f)[2]
    except Exception:  # not a valid .npy: search every byte
        return member
    return member if dtype.kind not in "biufc" else member[:f.tell()]


def _is_token(low: bytes, a: int, b: int, enc: str) -> bool:
    """True when ``low[a:b]`` is not part of a longer word or number (letters and digits on
    either side; ``_``, ``/``, ``-``, ``^``, spaces and punctuation separate tokens)."""
    w = _WIDTH[enc]
    before = low[max(0, a - 4 * w):a].decode(enc, errors="ignore")[-1:]
    after = low[b:b + 4 * w].decode(enc, errors="ignore")[:1]
    return not (before.isalnum() or after.isalnum())


def _excused(low: bytes, a: int, b: int, enc: str, allowed: set[str]) -> bool:
    """True when ``low[a:b]`` lies inside an occurrence of an allowed field's value."""
    for v in allowed:
        vb = v.encode(enc, errors="ignore").lower()
        if len(vb) < b - a:
            continue
        lo, hi = max(0, b - len(vb)), min(len(low), a + len(vb))
        i = low.find(vb, lo, hi)
        while i != -1:
            if i <= a and i + len(vb) >= b:
                return True
            i = low.find(vb, i + 1, hi)
    return False


def _where(path: Path, member: str, payload: bytes, a: int, enc: str, found: str) -> tuple[str, str]:
    """(where in the file, column/key) of a hit at byte ``a`` of ``payload``."""
    if member and member not in ("gzip contents",):
        return f"member {member}", ""
    if enc != "utf-8" or b"\0" in payload[:4096]:
        return f"byte {a}", ""
    line_no = payload.count(b"\n", 0, a) + 1
    ls = payload.rfind(b"\n", 0, a) + 1
    le = payload.find(b"\n", a)
    line = payload[ls:le if le != -1 else len(payload)].decode("utf-8", errors="replace")
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        delim = "\t" if name.endswith(".tsv") else ","
        first = payload[:payload.find(b"\n") if b"\n" in payload else len(payload)].decode("utf-8", errors="replace")
        try:
            header = next(csv.reader([first], delimiter=delim))
            cells = next(csv.reader([line], delimiter=delim))
        except (csv.Error, StopIteration):
            return f"line {line_no}", ""
        for i, cell in enumerate(cells):
            if found in cell.lower():
                col = header[i] if i < len(header) and line_no > 1 else (f"header cell {i + 1}" if line_no == 1 else f"cell {i + 1}")
                return f"column {col}, line {line_no}", col if line_no > 1 else ""
        return f"line {line_no}", ""
    if name.endswith(".json"):
        m = re.match(r'\s*"((?:[^"\\]|\\.)*)"\s*:', line)
        if m:
            return f'key "{m.group(1)}", line {line_no}', m.group(1)
    return f"line {line_no}", ""


def audit_outputs(out_dir: str | os.PathLike, source_root: str | os.PathLike, allow=()) -> AuditReport:
    """Search every file under ``out_dir`` for identifying values of the DICOM files under
    ``source_root`` (whole tokens; see the module docstring).  ``allow``: DICOM keywords of
    header fields meant to be output, whose values excuse a hit inside them."""
    from .errors import InputError

    out_dir, source_root = Path(out_dir), Path(source_root)
    for p in (out_dir, source_root):
        if not p.is_dir():
            raise InputError("not a folder", p)
    allow = allowed_keywords(allow)
    values, allowed, n_src = _collect(source_root, allow)
    if n_src == 0:
        raise InputError("no DICOM files found to take identifiers from", source_root)
    report = AuditReport(n_source_files=n_src, n_values=len(values), allowed_fields=allow)
    if not values:
        return report
    # numpy stores str arrays as UTF-32, Windows tools write UTF-16: search those byte forms too.
    # One pass per payload: every spelling in every encoding goes into one prefix-tree regex,
    # matched against the ASCII-lower-cased bytes (an IGNORECASE alternation of ~100 literals ran
    # at ~0.5 MB/s; this runs at tens of MB/s, so a cohort's volumes are audited in seconds).
    # A match that is not a whole token is tried again with the shorter spellings starting there.
    needles: dict[bytes, tuple[str, str]] = {}
    for enc in _ENCODINGS:
        for v in values:
            needles.setdefault(v.encode(enc).lower(), (v, enc))
    lengths = sorted({len(k) for k in needles}, reverse=True)
    pattern = re.compile(_trie_regex(list(needles)))
    src_resolved = source_root.resolve()
    for path in sorted(out_dir.rglob("*")):
        if not path.is_file() or src_resolved in path.resolve().parents:
            continue
        report.n_output_files += 1
        try:
            for member, payload in _payloads(path):
                low = payload.lower()
                pos = 0
                while True:
                    m = pattern.search(low, pos)
                    if m is None:
                        break
                    a = m.start()
                    hit = None
                    for L in (n for n in lengths if n <= m.end() - a):
                        cand = low[a:a + L]
                        if cand in needles and _is_token(low, a, a + L, needles[cand][1]):
                            hit = (a + L, cand)
                            break
                    if hit is None:
                        pos = a + 1
                        continue
                    b, cand = hit
                    pos = b
                    found, enc = needles[cand]
                    if allowed and _excused(low, a, b, enc, allowed):
                        report.n_excused += 1
                        continue
                    w = 20 * _WIDTH[enc]
                    ctx = payload[max(0, a - w):b + w].decode(enc, errors="replace")
                    where, column = _where(path, member, payload, a, enc, found)
                    report.hits.append(Hit(str(path.relative_to(out_dir)), values.get(found, "?"),
                                           ctx.replace("\n", " ").replace("\0", ""), where, column))
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

