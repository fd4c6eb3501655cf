"""DICOM metadata as free auxiliary labels (issue #18): index derives ``sex`` and a decade
``age_bin`` from PatientSex / PatientAge (or birth and study dates, in memory), extract carries
them into volumes.csv, ``pretrain --aux-heads sex:2,age_bin:5`` trains on them; no raw age or
date reaches an output."""

import csv
import json

import pytest

from SpineSSLLib.cli import main
from SpineSSLLib.errors import ConfigError
from SpineSSLLib.index import IndexConfig, age_bin, age_years, sex_label

EDGES = IndexConfig().age_bin_edges


def test_label_rules():
    assert [sex_label(v) for v in ("F", "M", "O", "", "f ")] == ["0", "1", "", "", "0"]
    assert age_years("045Y") == 45 and age_years("030M") == 2.5 and age_years("") is None
    assert age_years(birth_date="19600615", study_date="20100614") == pytest.approx(49.997, abs=0.01)
    assert age_years("", "19600615", "") is None and age_years("abc") is None
    assert [age_bin(a, EDGES) for a in (18, 39.99, 40, 55, 69.9, 70, 101, None, -1)] == \
        ["0", "0", "1", "2", "3", "4", "4", "", ""]
    with pytest.raises(ConfigError, match="age_bin_edges"):
        IndexConfig(age_bin_edges=[50, 40])


def test_labels_match_the_synthetic_truth_and_reach_volumes_csv(synth_cohort):
    syn, C = synth_cohort
    truth = {}
    for p in (syn / "truth").glob("*.json"):
        t = json.loads(p.read_text())
        if isinstance(t, dict) and "sex" in t:
            truth[t["series_instance_uid"]] = t
    from SpineSSLLib.privacy import load_or_create_salt, salted_key

    salt = load_or_create_salt(C)
    by_key = {salted_key(salt, "series:" + uid): t for uid, t in truth.items()}
    series = list(csv.DictReader(open(C / "series.csv")))
    assert series and all(r["scan_key"] in by_key for r in series)
    for r in series:
        t = by_key[r["scan_key"]]
        assert r["sex"] == {"F": "0", "M": "1"}[t["sex"]]
        assert r["age_bin"] == age_bin(int(t["age_years"]), EDGES)  # PatientAge holds whole years
    assert len({r["age_bin"] for r in series}) >= 2
    want = {r["scan_key"]: (r["sex"], r["age_bin"]) for r in series}
    vols = list(csv.DictReader(open(C / "volumes.csv")))
    assert vols and all((v["sex"], v["age_bin"]) == want[v["scan_key"]] for v in vols)


def test_no_age_or_date_in_outputs(synth_cohort, capsys):
    """The audit searches PatientAge ("047Y") and every date spelling; index + extract outputs hold none."""
    syn, C = synth_cohort
    capsys.readouterr()
    assert main(["audit-outputs", str(C), "--source", str(syn / "dicom")]) == 0, capsys.readouterr().out
    import pydicom

    first = next(p for p in sorted((syn / "dicom").rglob("*")) if p.is_file())
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    from SpineSSLLib.privacy import collect_identifiers

    values, _ = collect_identifiers(syn / "dicom")
    assert values.get(str(ds.PatientAge).lower()) == "PatientAge"
    assert values.get(str(ds.PatientBirthDate).lower()) == "PatientBirthDate"


def test_pretrain_with_aux_heads_from_index_labels(aux_pretrained):
    P = aux_pretrained
    log = list(csv.DictReader(open(P / "log.csv")))
    assert log and {"train_aux_sex", "train_aux_age_bin"} <= set(log[0])
    # cross-entropy of an untrained 2-/5-class head is about ln 2 / ln 5: real labels were read
    assert 0.3 < float(log[0]["train_aux_sex"]) < 1.5 and 0.8 < float(log[0]["train_aux_age_bin"]) < 3.0
    cfg = json.loads((P / "best" / "checkpoint.json").read_text())["config"]["model"]
    assert cfg["aux_heads"] == {"sex": 2, "age_bin": 5}
