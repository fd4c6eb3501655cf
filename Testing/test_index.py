"""index: series grouping from a messy folder tree, sagittal T2 selection, pseudonymous keys,
intervals, families, rejected series with reasons, NIfTI/MHA tables, privacy of outputs."""

import csv
import json
import os

import numpy as np
import pytest
from extract_phantom import sagittal_affine, write_image

from SpineSSLLib.cli import main as cli
from SpineSSLLib.errors import ConfigError
from SpineSSLLib.index import IndexConfig, build_index, classify_t2, locate_sources
from SpineSSLLib.privacy import audit_outputs
from SpineSSLLib.synth.dicom import write_series

SHAPE = (5, 24, 20)


def vol(seed):
    return np.random.default_rng(seed).uniform(10, 900, SHAPE).round().astype(np.float32)


def hdr(pid, date, desc="SAG T2 TSE", te="100", **kw):
    return {"PatientID": pid, "PatientName": f"{pid}^SECRETNAME", "PatientBirthDate": "19600102",
            "StudyDate": date, "SeriesDescription": desc, "EchoTime": te, "MagneticFieldStrength": "1.5",
            "SeriesNumber": kw.pop("series_number", 1), **kw}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Subject A: baseline + follow-up 10 years later (each: sag T2, sag T1, axial T2);
    subject B: one study with a sag T2 from the echo time only, and a too-oblique series;
    plus stray files, a truncated file, nesting and names without extension."""
    root = tmp_path_factory.mktemp("pacs") / "export"
    sag = sagittal_affine(SHAPE, (1.0, 1.0, 4.0))
    axial = np.eye(4)
    axial[:3, :3] = np.diag([0.8, 0.8, 5.0])
    t = np.radians(40)
    obl = np.eye(4)
    obl[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    for i, date in enumerate(("20040301", "20140305")):
        st = f"1.2.826.1.{i}"
        write_series(root / "A" / date / "s1", vol(1 + i), sag, hdr("PAT_A", date), study_uid=st,
                     file_names=[f"{k}" for k in range(5)])
        write_series(root / "A" / date / "s2", vol(10 + i), sag, hdr("PAT_A", date, "SAG T1 TSE", "12",
                                                                      series_number=2), study_uid=st)
        write_series(root / "A" / date / "deep" / "x", vol(20 + i), axial, hdr("PAT_A", date, "AX T2", series_number=3),
                     study_uid=st)
    write_series(root / "B", vol(30), sag, hdr("PAT_B", "20100101", "", "95"), study_uid="1.2.826.9")
    write_series(root / "B" / "obl", vol(31), obl @ sag, hdr("PAT_B", "20100101", "SAG T2 obl", series_number=2),
                 study_uid="1.2.826.9")
    (root / "notes.txt").write_text("exported by PACS")
    bad = write_series(root / "C", vol(40), sag, hdr("PAT_C", "20120101"), study_uid="1.2.826.10")
    bad[0].write_bytes(bad[0].read_bytes()[:200])
    fam = root.parent / "families.csv"
    fam.write_text("patient_id,family_id\nPAT_A,TWIN7\nPAT_B,TWIN7\n")
    out = root.parent / "C"
    rc = cli(["-q", "index", str(root), "--out", str(out), "--families", str(fam)])
    return root, out, rc


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_series_grouped_and_t2_sagittal_selected(tree):
    root, out, rc = tree
    series = rows(out / "series.csv")
    assert len(series) == 9  # A: 2 x 3, B: 2, C: 1
    sel = [r for r in series if r["status"] == "selected"]
    assert len(sel) == 4  # A baseline, A follow-up, B, C (C's broken file is dropped, rest ok)
    assert {r["description"] for r in sel} == {"SAG T2 TSE", ""}
    b = next(r for r in sel if r["description"] == "")
    assert b["t2_by"] == "echo time"
    t1 = [r for r in series if r["description"] == "SAG T1 TSE"]
    assert all(r["status"] == "not_selected" and r["reason"] == "not T2 (by description)" for r in t1)
    ax = [r for r in series if r["description"] == "AX T2"]
    assert all(r["status"] == "rejected" and r["reason"].startswith("not sagittal") for r in ax)
    ob = next(r for r in series if r["description"] == "SAG T2 obl")
    assert ob["status"] == "rejected" and "oblique" in ob["reason"] and ob["orientation_ok"] == "no"
    assert float(ob["obliquity_deg"]) == pytest.approx(40, abs=0.1)
    counts = {}
    for r in sel:
        counts[r["subject_key"]] = counts.get(r["subject_key"], 0) + 1
    a0 = next(r for r in sel if counts[r["subject_key"]] == 2 and r["interval_days"] == "0")
    c = next(r for r in sel if r["n_files"] == "4")  # C: its truncated file is left out
    assert c["slices"] == "4" and c["description"] == "SAG T2 TSE"
    assert a0["slices"] == "5" and a0["rows"] == "24" and a0["columns"] == "20" and a0["slice_spacing_mm"] == "4"
    assert a0["field_strength"] == "1.5" and a0["pixel_spacing_mm"] == "1x1"


def test_longitudinal_keys_and_intervals(tree):
    root, out, rc = tree
    sel = [r for r in rows(out / "series.csv") if r["status"] == "selected"]
    by_subject = {}
    for r in sel:
        by_subject.setdefault(r["subject_key"], []).append(r)
    assert sorted(len(v) for v in by_subject.values()) == [1, 1, 2]
    pair = next(v for v in by_subject.values() if len(v) == 2)
    import datetime as dt

    expected = (dt.date(2014, 3, 5) - dt.date(2004, 3, 1)).days
    assert sorted(int(r["interval_days"]) for r in pair) == [0, expected]
    assert sorted(int(r["timepoint"]) for r in pair) == [0, 1]
    assert len({r["scan_key"] for r in sel}) == 4 and len({r["study_key"] for r in pair}) == 2
    twins = [r["family"] for r in sel if r["family"]]
    assert len(twins) == 3 and len(set(twins)) == 1  # A (two scans) and B share TWIN7; C none


def test_outputs_hold_no_identifiers(tree):
    root, out, rc = tree
    rep = audit_outputs(out, root)
    assert rep.n_values > 0 and rep.ok, rep.hits
    text = "".join(p.read_text() for p in out.glob("*.csv"))
    for s in ("PAT_A", "SECRETNAME", "2004", "20140305", "19600102", "TWIN7"):
        assert s not in text


def test_truncated_file_reported_and_exit_code_1(tree):
    root, out, rc = tree
    assert rc == 1
    errs = rows(out / "errors.csv")
    assert len(errs) == 1 and errs[0]["error_type"] == "DicomError"
    assert errs[0]["file"] == os.path.join("C", "IM0001.dcm") and "truncated" in errs[0]["message"]


def test_salt_written_once_keys_stable_and_cohort_specific(tree, tmp_path):
    root, out, rc = tree
    salt = (out / "cohort_salt.txt").read_text()
    keys = [r["subject_key"] for r in rows(out / "series.csv")]
    build_index(root, out)
    assert (out / "cohort_salt.txt").read_text() == salt
    assert [r["subject_key"] for r in rows(out / "series.csv")] == keys
    other = build_index(root, tmp_path / "other")
    assert not set(keys) & {r["subject_key"] for r in other.series}


def test_sources_found_again_by_hashed_paths(tree):
    root, out, rc = tree
    sel = {r["scan_key"]: r for r in rows(out / "series.csv") if r["status"] == "selected"}
    found = locate_sources(out)
    for key, r in sel.items():
        assert len(found[key]) == int(r["n_files"])
        assert all(os.path.isfile(p) for p in found[key])
    assert not any(str(root) in line for line in (out / "sources.csv").read_text().splitlines())


def test_config_rules_and_validation(tree, tmp_path):
    root, out, rc = tree
    cfg = tmp_path / "rules.json"
    cfg.write_text(json.dumps({"t2_pattern": "t1", "exclude_pattern": "zzz", "min_t2_echo_ms": 200}))
    res = build_index(root, tmp_path / "c2", IndexConfig.from_file(cfg))
    sel = [r for r in res.series if r["status"] == "selected"]
    assert {r["description"] for r in sel} == {"SAG T1 TSE"}  # B's TE 95 < 200 -> no T2 there
    cfg.write_text(json.dumps({"t2_patern": "x"}))
    with pytest.raises(ConfigError, match="unknown key"):
        IndexConfig.from_file(cfg)
    with pytest.raises(ConfigError):
        IndexConfig(t2_pattern="(")


def test_classify_t2():
    cfg = IndexConfig()
    assert classify_t2("SAG T2 TSE", None, cfg) == (True, "description")
    assert classify_t2("sag_t2_stir", 80, cfg) == (False, "description")
    assert classify_t2("", 110, cfg) == (True, "echo time")
    assert classify_t2("", 15, cfg) == (False, "echo time")
    assert classify_t2("", None, cfg) == (False, "unknown")


def test_image_cohort_from_table(tmp_path):
    root = tmp_path / "spider"
    (root / "images").mkdir(parents=True)
    aff = sagittal_affine(SHAPE, (0.6, 0.6, 3.3))
    for name in ("1_t2", "2_t2"):
        write_image(root / "images" / f"{name}.mha", vol(len(name)), aff)
    axial = np.diag([0.8, 0.8, 5.0, 1.0])
    write_image(root / "images" / "3_t2.mha", vol(3), axial)
    table = tmp_path / "table.csv"
    table.write_text("file,subject,interval_days\nimages/1_t2.mha,1,0\nimages/2_t2.mha,1,400\nimages/3_t2.mha,3,0\n")
    out = tmp_path / "C"
    assert cli(["-q", "index", str(root), "--out", str(out), "--table", str(table)]) == 0
    series = rows(out / "series.csv")
    ok = [r for r in series if r["status"] == "selected"]
    assert len(ok) == 2 and sorted(r["interval_days"] for r in ok) == ["0", "400"]
    assert len({r["subject_key"] for r in ok}) == 1 and ok[0]["format"] == "image"
    assert ok[0]["slice_spacing_mm"] == "3.3"
    bad = next(r for r in series if r["status"] == "rejected")
    assert "not sagittal" in bad["reason"]
    found = locate_sources(out)
    assert sorted(os.path.basename(found[r["scan_key"]][0]) for r in ok) == ["1_t2.mha", "2_t2.mha"]


def test_image_table_labels_and_shards(tmp_path):
    """Table cohorts: sex/age columns become labels; 2 shards merged equal one run."""
    import shutil

    root = tmp_path / "img"
    root.mkdir()
    aff = sagittal_affine(SHAPE, (0.6, 0.6, 3.3))
    lines = ["file,subject,interval_days,sex,age"]
    for i in range(6):
        write_image(root / f"{i}.mha", vol(i), aff)
        lines.append(f"{i}.mha,p{i // 2},{400 * (i % 2)},{'FM'[i % 2] if i < 4 else ''},{38 + 9 * i}")
    table = tmp_path / "t.csv"
    table.write_text("\n".join(lines) + "\n")
    A, B = tmp_path / "A", tmp_path / "B"
    assert cli(["-q", "index", str(root), "--out", str(A), "--table", str(table)]) == 0
    got = {(r["interval_days"], r["sex"], r["age_bin"]) for r in rows(A / "series.csv")}
    assert ("0", "0", "0") in got and ("400", "1", "1") in got and ("400", "", "4") in got
    B.mkdir()
    shutil.copy(A / "cohort_salt.txt", B)
    for i in range(2):
        assert cli(["-q", "index", str(root), "--out", str(B), "--table", str(table), "--shard", f"{i}/2"]) == 0
    assert cli(["-q", "merge", str(B)]) == 0
    for name in ("series.csv", "sources.csv", "errors.csv", "index.json"):
        assert (A / name).read_bytes() == (B / name).read_bytes(), name


def test_image_folder_without_table_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.nii.gz", vol(1), sagittal_affine(SHAPE))
    rc = cli(["index", str(tmp_path / "in"), "--out", str(tmp_path / "C")])
    err = capsys.readouterr().err
    assert rc == 2 and "--table" in err and err.count("\n") == 1


def test_empty_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("x")
    assert cli(["index", str(tmp_path / "in"), "--out", str(tmp_path / "C")]) == 2
    assert "no DICOM image series" in capsys.readouterr().err


def test_paths_named_after_the_patient_are_redacted(tmp_path):
    root = tmp_path / "in"
    sag = sagittal_affine(SHAPE, (1.0, 1.0, 4.0))
    write_series(root / "DOE_JANE_PAT77" / "ok", vol(1), sag, hdr("DOE_JANE_PAT77", "20100101"))
    bad = write_series(root / "DOE_JANE_PAT77" / "bad", vol(2), sag, hdr("DOE_JANE_PAT77", "20110101"))
    bad[0].write_bytes(bad[0].read_bytes()[:-40])
    res = build_index(root, tmp_path / "C")
    assert res.errors and all("DOE_JANE_PAT77" not in e["file"] + e["message"] for e in res.errors)
    assert res.errors[0]["file"].startswith("<redacted>")
    assert audit_outputs(tmp_path / "C", root).ok
