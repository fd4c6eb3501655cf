"""``spine-ssl synth-alt``, the held-out evaluation generator: the main generator's output
contract, truth against the pixels and label maps, the pipeline reading it like a foreign cohort,
determinism, grade frequencies, identity over time, and that no training code uses it."""

import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from SpineSSLLib import DISC_NAMES, LEVEL_NAMES
from SpineSSLLib.errors import ConfigError, InputError
from SpineSSLLib.levels import from_truth_json
from SpineSSLLib.synth.config import SPIDER_GRADE_COUNTS
from SpineSSLLib.synth.labels import vertebra_label
from SpineSSLLib.synth_alt import generate_cohort
from SpineSSLLib.synth_alt.config import AltConfig, preset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_alt") / "cohort"
    return out, generate_cohort(out, preset("tiny", seed=0))


def _truths(root):
    return [json.loads(p.read_text()) for p in sorted((root / "truth").glob("*.json"))]


def _cli(*args):
    exe = Path(sys.executable).parent / "spine-ssl"
    return subprocess.run([str(exe), "-q", *args], capture_output=True, text=True)


def test_layout_tables_and_evaluation_only_marking(tiny):
    root, summary = tiny
    cohort = json.loads((root / "cohort.json").read_text())
    assert cohort["evaluation_only"] is True and "never train" in cohort["purpose"]
    assert cohort["truth_schema"] == "spinessl.synth.truth/1" and cohort["summary"] == summary
    rows = list(csv.DictReader(open(root / "subjects.csv")))
    assert [r["subject_id"] for r in rows] == ["H0001", "H0002", "H0003"]
    truths = _truths(root)
    assert summary["scans"] == len(truths) == sum(int(r["n_visits"]) for r in rows) >= 4
    assert summary["twin_pairs"] == 1 and len({r["family_id"] for r in rows}) == 2
    for r in rows:
        assert sorted(int(p.name) for p in (root / "dicom" / r["subject_id"]).iterdir()) == list(range(int(r["n_visits"])))
    assert sum(summary["grade_histogram"].values()) == 6 * len(truths)
    assert not list(root.parent.glob(".cohort.partial-*"))


def test_truth_follows_the_main_generators_schema(tiny):
    root, _ = tiny
    main_keys = {"schema", "subject_id", "family_id", "visit", "interval_days", "field_strength",
                 "study_instance_uid", "series_instance_uid", "dicom_dir", "age_years", "sex", "shape",
                 "affine_lps", "levels", "discs", "labelmap", "fingerprint"}
    for p in sorted((root / "truth").glob("*.json")):
        t = json.loads(p.read_text())
        assert main_keys <= set(t) and t["schema"] == "spinessl.synth.truth/1" and t["evaluation_only"]
        assert p.stem == t["series_instance_uid"] and (root / "truth" / t["labelmap"]).exists()
        ls = from_truth_json(p)
        assert set(ls.names) | set(t["levels_outside_fov"]) == set(LEVEL_NAMES) and "S1" in ls.names
        assert len(ls.names) >= 5 and not ls.issues
        zs = [ls[n].centroid[2] for n in LEVEL_NAMES if n in ls]
        assert all(a > b for a, b in zip(zs, zs[1:]))  # superior to inferior
        assert [d["name"] for d in t["discs"]] == list(DISC_NAMES)
        for d in t["discs"]:
            assert d["true_grade"] in (1, 2, 3, 4) and (d["grade"] is None or abs(d["grade"] - d["true_grade"]) <= 1)
            assert int(np.floor(d["appearance"])) + 1 == d["true_grade"]
        assert set(t["fingerprint"]["levels"]) == set(LEVEL_NAMES)
        if t["visit"] > 0:
            assert t["interval_days"] > 300


def test_dicom_headers_and_geometry_match_truth(tiny):
    from SpineSSLLib.io import read_dicom_series

    root, _ = tiny
    manufacturers, iops, reversed_ = set(), set(), set()
    for t in _truths(root):
        folder = root / t["dicom_dir"]
        files = sorted(folder.iterdir())
        ds = pydicom.dcmread(files[0])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.SeriesInstanceUID == t["series_instance_uid"]
        assert str(ds.PatientName).startswith("Holdout^Person") and ds.PatientID.startswith("HX")
        assert re.search(r"t2", ds.SeriesDescription, re.I) or float(ds.EchoTime) >= 60
        manufacturers.add(ds.Manufacturer)
        iops.add(tuple(np.round(np.array(ds.ImageOrientationPatient, float))))
        scan = read_dicom_series(folder, max_oblique_deg=None)
        assert scan.shape == tuple(t["shape"])
        np.testing.assert_allclose(scan.affine, np.array(t["affine_lps"]), atol=2e-3)
        reversed_.add(t["acquisition"]["stored_reversed"])
        assert 0.4 <= t["acquisition"]["pixel_mm"] <= 1.45 and 3.0 <= float(ds.SliceThickness) <= 6.0
    assert len(manufacturers) >= 2 and len(iops) >= 2  # more than one vendor and image-axis convention


def test_truth_centroids_lie_inside_the_rendered_vertebrae(tiny):
    from SpineSSLLib.io import read_dicom_series

    root, _ = tiny
    for t in _truths(root):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "truth" / t["labelmap"])))
        scan = read_dicom_series(root / t["dicom_dir"], max_oblique_deg=None)
        assert lab.shape == scan.shape
        bg = np.percentile(scan.array, 5)
        for lv in t["levels"]["levels"]:
            i, j, k = np.rint(scan.lps_to_index(np.array(lv["centroid_lps"]))).astype(int)
            patch = lab[max(k - 1, 0):k + 2, j - 1:j + 2, i - 1:i + 2]
            assert (patch == vertebra_label(lv["name"])).any(), (t["dicom_dir"], lv["name"])
            assert scan.array[k, j, i] > bg  # bone marrow, not background
            # the label's voxels centre near the truth centroid (in-plane; partial bodies at the edges aside)
            kji = np.argwhere(lab == vertebra_label(lv["name"]))
            c = scan.index_to_lps(kji[:, ::-1].mean(0))
            if lv["name"] not in t["vertebrae_visible"][:1]:
                assert np.linalg.norm((c - lv["centroid_lps"])[1:]) < 6.0, lv["name"]
            lo, hi = lv["slice_range"]
            assert lo <= lv["mid_slice"] <= hi


def test_index_and_extract_read_it_like_a_foreign_cohort(tiny, tmp_path):
    root, _ = tiny
    C = tmp_path / "C"
    r = _cli("index", str(root / "dicom"), "--out", str(C), "--families", str(root / "subjects.csv"))
    assert r.returncode == 0, r.stderr
    series = list(csv.DictReader(open(C / "series.csv")))
    assert len(series) == len(_truths(root)) and all(s["status"] == "selected" for s in series)
    assert len({s["subject_key"] for s in series}) == 3 and len({s["family"] for s in series}) == 2
    r = _cli("extract", str(C), "--levels", f"truth:{root / 'truth'}", "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    scans = list(csv.DictReader(open(C / "scans.csv")))
    assert all(s["status"] == "ok" and int(s["n_vb"]) >= 5 and int(s["n_ivd"]) >= 4 for s in scans)
    vols = list(csv.DictReader(open(C / "volumes.csv")))
    assert {v["grade"] for v in vols if v["kind"] == "IVD"} <= {"1", "2", "3", "4"}
    assert {v["timepoint"] for v in vols} == {"0", "1"}


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    def digest(root):
        return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}

    cfg = preset("tiny", seed=5, subjects=1, followup_fraction=1.0)
    generate_cohort(tmp_path / "a", cfg)
    generate_cohort(tmp_path / "b", cfg, workers=2)  # worker processes do not change the output
    generate_cohort(tmp_path / "c", preset("tiny", seed=6, subjects=1, followup_fraction=1.0))
    a, b, c = (digest(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 10
    assert {v for k, v in a.items() if k.parts[0] == "dicom"}.isdisjoint(v for k, v in c.items() if k.parts[0] == "dicom")


def test_grade_frequencies_follow_spider_and_the_rater_errs_near_boundaries():
    from SpineSSLLib.synth_alt import subject

    cfg = AltConfig(subjects=1200, twin_fraction=0.0, graded_fraction=1.0, followup_fraction=0.5)
    cdf = subject.grade_cdf()
    base = {d: Counter() for d in DISC_NAMES}
    moved = total = 0
    gain = []
    for i in range(1200):
        s = subject.make_family(cfg, i, i, 1)[0]
        vs = [subject.visit(cfg, s, k, cdf) for k in range(s.n_visits)]
        for d, g in zip(DISC_NAMES, vs[0].true_grades):
            base[d][g] += 1
        for v in vs:
            for g, t in zip(v.grades, v.true_grades):
                moved += g != t
                total += 1
        if len(vs) > 1:
            gain.append(np.mean(vs[1].true_grades) - np.mean(vs[0].true_grades))
    for d in DISC_NAMES:
        want = np.array(SPIDER_GRADE_COUNTS[d], float) / sum(SPIDER_GRADE_COUNTS[d])
        got = np.array([base[d][g] for g in (1, 2, 3, 4)], float) / 1200
        assert np.abs(got - want).max() < 0.05, (d, got, want)
    assert 0.1 < moved / total < 0.25
    assert np.mean(gain) > 0.2 and min(gain) >= 0  # discs degenerate over the years, never recover


def test_identity_persists_over_a_decade_and_ages():
    from SpineSSLLib.synth_alt import subject
    from SpineSSLLib.synth_alt.calibration import fingerprint_vector

    cfg = AltConfig(subjects=30, twin_fraction=0.0, followup_fraction=1.0, three_visit_fraction=0.0)
    fps, heights, ff = {}, [], []
    for i in range(30):
        s = subject.make_family(cfg, i, i, 1)[0]
        v0, v1 = subject.visit(cfg, s, 0), subject.visit(cfg, s, 1)
        for k, v in ((0, v0), (1, v1)):
            fps[(i, k)] = np.concatenate([fingerprint_vector(v.fingerprint(), n) for n in ("L2", "L3", "L4")])
        heights.append(v1.vb["b"][5:].mean() < v0.vb["b"][5:].mean())
        ff.append(v1.vb["ff"].mean() > v0.vb["ff"].mean())
    sd = np.std(np.stack(list(fps.values())), 0) + 1e-9
    d = lambda a, b: np.linalg.norm((fps[a] - fps[b]) / sd)
    for i in range(30):
        assert d((i, 0), (i, 1)) < min(d((i, 0), (j, 1)) for j in range(30) if j != i)
    assert np.mean(heights) > 0.9 and np.mean(ff) > 0.9


def test_acquisitions_vary_in_the_held_out_ways():
    from SpineSSLLib.synth_alt import protocol, subject
    from SpineSSLLib.synth_alt.render import geometry
    from SpineSSLLib.synth_alt.shapes import Spine

    cfg = AltConfig(subjects=60)
    tops, conv, thick, pix, fs_sat, k_slices, rect = Counter(), set(), set(), [], 0, set(), 0
    for i in range(60):
        s = subject.make_family(cfg, i, i, 1)[0]
        p = protocol.draw(cfg, s, 0)
        g = geometry(Spine(subject.visit(cfg, s, 0)), p, cfg.max_matrix)
        tops[p.top_vertebra] += 1
        conv.add(p.convention)
        thick.add(p.thickness)
        pix.append(np.linalg.norm(g.affine[:3, 0]))
        k_slices.add(g.shape[0])
        fs_sat += p.fat_sat
        rect += g.shape[1] != g.shape[2]
    assert set(tops) >= {"T9", "T10", "T11", "T12", "L1"} and len(conv) >= 4 and min(thick) == 3.0 and max(thick) == 6.0
    assert 0.38 <= min(pix) < 0.6 and 0.9 < max(pix) <= 1.25 and len(k_slices) >= 5 and 0 < fs_sat < 30 and rect > 30


@pytest.mark.parametrize("knobs, match", [
    (dict(subjects=0), "subjects"), (dict(seed=-1), "seed"), (dict(followup_fraction=1.5), "followup_fraction"),
    (dict(rater_noise=0.9), "rater_noise"), (dict(max_matrix=100), "max_matrix"),
    (dict(baseline_age=(70, 30)), "baseline_age"),
])
def test_bad_knobs_raise_config_error(knobs, match):
    with pytest.raises(ConfigError, match=match):
        preset("tiny", **knobs)


def test_cli_errors_are_one_line_and_nothing_is_left_behind(tmp_path, monkeypatch):
    r = _cli("synth-alt", str(tmp_path / "x"), "--subjects", "0")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "subjects" in r.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "f").write_text("1")
    r = _cli("synth-alt", str(busy), "--preset", "tiny")
    assert r.returncode == 2 and "not empty" in r.stderr
    with pytest.raises(InputError, match="not empty"):
        generate_cohort(busy, preset("tiny", subjects=1))
    # a failure mid-run removes the partial folder
    from SpineSSLLib.synth_alt import render

    def boom(*a, **k):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(render, "render_visit", boom)
    with pytest.raises(RuntimeError):
        generate_cohort(tmp_path / "never", preset("tiny", subjects=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_no_training_code_uses_the_held_out_generator():
    """The generator is for evaluation only: outside its own package and command, only
    evaluation code (a path naming 'eval') and benchmarks may mention it."""
    offenders = []
    for p in sorted((REPO / "SpineSSLLib").rglob("*.py")) + sorted((REPO / "scripts").rglob("*")) + [REPO / "Makefile"]:
        rel = p.relative_to(REPO).as_posix()
        if not p.is_file() or rel.startswith("SpineSSLLib/synth_alt/") or rel in (
                "SpineSSLLib/commands/synth_alt.py", "SpineSSLLib/commands/__init__.py"):  # the command, its help order
            continue
        text = p.read_text(errors="ignore")
        if re.search(r"synth[_-]alt", text) and "eval" not in rel:
            offenders.append(rel)
    assert offenders == []
