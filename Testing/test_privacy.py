"""Privacy audit: identifiers from source DICOM headers are found in any spelling, in any file kind."""


import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from SpineSSLLib.cli import main
from SpineSSLLib.errors import InputError
from SpineSSLLib.privacy import audit_outputs


@pytest.fixture()
def source(tmp_path):
    src = tmp_path / "src" / "a" / "b"
    src.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PatientID = "PSEUDO-84721"
    ds.PatientName = "DOE^JANE"
    ds.PatientBirthDate = "19540317"
    ds.StudyDate = "20090412"
    ds.AccessionNumber = "ACC99812"
    ds.InstitutionName = "St Elsewhere Hospital"
    ds.save_as(src / "IM0001")  # no extension, as PACS exports often are
    return tmp_path / "src"


def test_clean_outputs_pass(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "series.csv").write_text("scan_key,subject_key,interval_days\nab12cd,9f8e7d,0\n")
    np.savez_compressed(out / "vols.npz", vb=np.zeros((2, 3)), levels=np.array(["L1", "L2"]))
    rep = audit_outputs(out, source)
    assert rep.ok and rep.n_source_files == 1 and rep.n_output_files == 2


@pytest.mark.parametrize(
    "leak,tag",
    [
        ("subject PSEUDO-84721 scan 2", "PatientID"),
        ("name: Jane Doe", "PatientName"),
        ("doe^jane", "PatientName"),
        ("born 1954-03-17", "PatientBirthDate"),
        ("scanned 12.04.2009", "StudyDate"),
        ("acc ACC99812", "AccessionNumber"),
        ("site st elsewhere hospital", "InstitutionName"),
    ],
)
def test_each_identifier_spelling_is_caught_in_text(source, tmp_path, leak, tag):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text(f"# report\n{leak}\n")
    rep = audit_outputs(out, source)
    assert not rep.ok
    assert {h.tag for h in rep.hits} == {tag}
    assert rep.hits[0].file == "report.md"


def test_identifier_inside_compressed_npz_and_gzip_is_caught(source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    np.savez_compressed(out / "v.npz", ids=np.array(["PSEUDO-84721"]))
    import gzip

    (out / "x.json.gz").write_bytes(gzip.compress(b'{"date": "20090412"}'))
    rep = audit_outputs(out, source)
    assert sorted({(h.file, h.tag) for h in rep.hits}) == [("v.npz", "PatientID"), ("x.json.gz", "StudyDate")]


def test_cli_exit_codes(source, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ok.csv").write_text("a,b\n1,2\n")
    assert main(["audit-outputs", str(out), "--source", str(source)]) == 0
    (out / "bad.csv").write_text("PSEUDO-84721\n")
    assert main(["audit-outputs", str(out), "--source", str(source), "--report", str(tmp_path / "r.json")]) == 1
    assert "1 hit" in capsys.readouterr().out
    assert main(["audit-outputs", str(tmp_path / "missing"), "--source", str(source)]) == 2


def test_source_without_dicom_is_an_input_error(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("hello")
    (tmp_path / "o").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        audit_outputs(tmp_path / "o", tmp_path / "s")
