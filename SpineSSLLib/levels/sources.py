"""Level and grade sources for a batch: where each scan's levels (and disc grades) come from
(``LevelSource``: ``--levels KIND:FOLDER``), and the grade readers (truth JSON, grade tables)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import DISC_NAMES
from .core import LevelSet
from .labelmap import from_labelmap, resolve_label_mapping
from .readers import _load_json, from_markups, from_truth_json, load_spinenet_json


LEVEL_SOURCES = ("truth", "levels", "markups", "labels", "spinenet", "detect")  # detect[:MODEL]: run the detector
_PATTERNS = {
    "truth": ("{k}.json",),
    "levels": ("{k}.json",),  # saved level sets (spinessl.levels/1), e.g. written by `spine-ssl detect`
    "markups": ("{k}.mrk.json", "{k}.json"),
    "labels": ("{k}_labels.nii.gz", "{k}.nii.gz", "{k}_labels.nii", "{k}.nii", "{k}_labels.nrrd", "{k}.nrrd",
               "{k}_labels.mha", "{k}.mha", "{k}_labels.mhd", "{k}.mhd"),
    "spinenet": ("{k}.json", "{k}_vert_dicts.json"),
}


@dataclass
class LevelSource:
    kind: str
    folder: str
    mapping: str = "spider"  # label maps: preset name or mapping file

    @classmethod
    def parse(cls, spec: str, mapping: str = "spider") -> "LevelSource":
        from ..errors import ConfigError

        kind, sep, folder = spec.partition(":")
        if kind == "detect":  # automatic detection; optional model folder (default: bundled model)
            if folder and not os.path.isdir(folder):
                raise ConfigError(f"detector model folder not found: {folder}")
            return cls(kind, folder, mapping)
        if not sep or kind not in LEVEL_SOURCES or not folder:
            raise ConfigError(f"--levels must be KIND:FOLDER with KIND one of {', '.join(LEVEL_SOURCES)}, got {spec!r}")
        if not os.path.isdir(folder):
            raise ConfigError(f"level folder not found: {folder}")
        return cls(kind, folder, mapping)

    def find(self, keys: list[str]) -> str:
        from ..errors import LevelsError

        for k in keys:
            if not k:
                continue
            for pat in _PATTERNS[self.kind]:
                p = os.path.join(self.folder, pat.format(k=k))
                if os.path.isfile(p):
                    return p
        raise LevelsError(f"no {self.kind} level file for this scan (looked for "
                          f"{_PATTERNS[self.kind][0].format(k='<scan_key|SeriesInstanceUID|file stem>')})", self.folder)

    def load(self, scan, keys: list[str], device: str = "auto") -> tuple[LevelSet, str]:
        if self.kind == "detect":
            from ..detect.infer import detect_levels

            return detect_levels(scan, self.folder or None, device=device, min_confidence=0.5,
                                 where=scan.meta.get("source")), self.folder or "bundled detector"
        path = self.find(keys)
        if self.kind in ("truth", "levels"):
            return from_truth_json(path), path
        if self.kind == "markups":
            return from_markups(path), path
        if self.kind == "labels":
            return from_labelmap(path, scan, resolve_label_mapping(self.mapping)), path
        return load_spinenet_json(path, scan), path


def truth_grades(path) -> dict[str, int]:
    """Disc name -> grade (1..4) from a truth JSON; ungraded discs are left out."""
    d = _load_json(path)
    out = {}
    for disc in d.get("discs", []) or []:
        g = disc.get("grade")
        if g is not None and disc.get("name") in DISC_NAMES:
            out[disc["name"]] = int(g)
    return out


# SPIDER radiological_gradings.csv: IVD label n is the disc above vertebra n counted from the
# bottom (1 = L5/S1 ... 6 = T12/L1); 0 marks a disc below L5/S1 in transitional anatomy (ignored).
SPIDER_IVD = {1: "L5-S1", 2: "L4-L5", 3: "L3-L4", 4: "L2-L3", 5: "L1-L2", 6: "T12-L1"}


def _spider_grades(rows: list[dict], path) -> dict[str, dict[str, int]]:
    """Patient id -> disc -> Pfirrmann grade (1-5) from SPIDER's radiological_gradings.csv; the
    scans are matched by their file stem's patient prefix (``<patient>_t2.mha``)."""
    from ..errors import ManifestError

    out: dict[str, dict[str, int]] = {}
    for r in rows:
        try:
            label, grade = int(r["ivd label"]), int(float(r["pfirrman grade"]))
        except (KeyError, ValueError) as e:
            raise ManifestError(f"SPIDER gradings: bad row {r}", path) from e
        if label in SPIDER_IVD:
            out.setdefault(f"spider:{r['patient']}", {})[SPIDER_IVD[label]] = grade
    return out


def load_grades_csv(path) -> dict[str, dict[str, int]]:
    """scan key (scan_key or SeriesInstanceUID) -> disc -> grade from a CSV with columns
    ``scan_key`` or ``series_uid``, ``disc`` ('L4-L5' or 'L4/L5'), ``grade``; or SPIDER's
    ``radiological_gradings.csv`` (recognised by its columns)."""
    from ..errors import ManifestError
    from ..index import read_table

    out: dict[str, dict[str, int]] = {}
    rows = read_table(path)
    if rows and {"patient", "ivd label", "pfirrman grade"} <= set(rows[0]):
        return _spider_grades(rows, path)
    for r in rows:
        key = r.get("scan_key") or r.get("series_uid") or r.get("series_instance_uid")
        disc = (r.get("disc") or "").upper().replace("/", "-")
        if not key or disc not in DISC_NAMES:
            raise ManifestError(f"grades CSV row needs scan_key/series_uid and a disc in {DISC_NAMES}: {r}", path)
        try:
            out.setdefault(key, {})[disc] = int(float(r["grade"]))
        except (KeyError, ValueError) as e:
            raise ManifestError(f"grades CSV: bad grade in row {r}", path) from e
    return out
