"""Synth knobs: SPIDER-derived tables, pinned calibration knobs, grade model, label numbering."""

import csv
import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from SpineSSLLib import DISC_NAMES
from SpineSSLLib.synth import anatomy
from SpineSSLLib.synth.config import (PFIRRMANN_TO_CLASS, PRESETS, SPIDER_GRADE_COUNTS, SPIDER_T2_ACQUISITIONS,
                                      SynthConfig, preset)
from SpineSSLLib.synth.labels import DISC_LABELS, VERTEBRA_LABELS, label_names

SPIDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "spider"

# The calibration figures in docs/synthetic-cohort.md were measured with exactly these knobs.
# Changing one of them changes the figures: rerun benchmarks/synth_calibration.py, update the
# docs, then update this table.
PINNED = dict(
    followup_fraction=423 / 1016, three_visit_fraction=0.15, twin_fraction=0.5, graded_fraction=920 / 1016,
    interval_years=(8.0, 12.0), baseline_age=(35.0, 70.0), scanner_mode="paper", rater_noise=0.2,
    slices=(11, 19), matrix=(320, 512), fov_mm=(270.0, 320.0), obliquity_deg=3.0, flipped_order_fraction=0.3,
    marrow_change=0.45, lesion_rate=0.8, reposition_mm=3.0, posture_deg=4.0, crop_jitter_mm=2.5,
    nucleus_noise=0.12, height_noise=0.12,
)
PINNED_MODEL = dict(W_SUBJ=0.65, W_DISC=0.6, AGE_COEF=0.45, AGE_REF=52.5, PROG_SD=0.35)


def test_calibration_knobs_are_pinned():
    cfg = SynthConfig()
    for k, v in PINNED.items():
        assert getattr(cfg, k) == pytest.approx(v) if isinstance(v, float) else getattr(cfg, k) == v, k
    for k, v in PINNED_MODEL.items():
        assert getattr(anatomy, k) == v, k
    # presets change cohort size/shape only, never the calibration knobs
    calib = {"marrow_change", "lesion_rate", "reposition_mm", "posture_deg", "crop_jitter_mm", "nucleus_noise",
             "height_noise", "rater_noise", "scanner_mode"}
    for name, kw in PRESETS.items():
        assert not calib & set(kw), name


@pytest.mark.skipif(not SPIDER.is_dir(), reason="SPIDER tables not present on this machine")
def test_spider_tables_rederive_from_csv():
    acq = Counter()
    for r in csv.DictReader(open(SPIDER / "overview.csv")):
        if not r["new_file_name"].endswith("_t2"):
            continue
        thick = float(r["SliceThickness"])
        if not 3.0 <= thick <= 4.5:
            continue
        ps = float(r["PixelSpacing"].strip("[]").replace(",", " ").split()[0])
        acq[(round(ps, 4), thick, round(float(r["SpacingBetweenSlices"]), 3), float(r["MagneticFieldStrength"]))] += 1
    assert sorted((*k, v) for k, v in acq.items()) == sorted(SPIDER_T2_ACQUISITIONS)
    grades = {d: Counter() for d in DISC_NAMES}
    ivd_to_disc = {1: "L5-S1", 2: "L4-L5", 3: "L3-L4", 4: "L2-L3", 5: "L1-L2", 6: "T12-L1"}
    for r in csv.DictReader(open(SPIDER / "radiological_gradings.csv")):
        lab = int(r["IVD label"])
        if lab in ivd_to_disc:
            grades[ivd_to_disc[lab]][PFIRRMANN_TO_CLASS[int(r["Pfirrman grade"])]] += 1
    for d in DISC_NAMES:
        assert tuple(grades[d][g] for g in (1, 2, 3, 4)) == SPIDER_GRADE_COUNTS[d]


def test_baseline_grade_frequencies_follow_spider_and_followups_degenerate():
    """Simulate many subjects' grade model (no pixels): frequencies per disc match SPIDER within
    a few points and follow-ups move up more often than down."""
    cfg = SynthConfig(subjects=1, rater_noise=0.0, graded_fraction=1.0, followup_fraction=1.0, three_visit_fraction=0.0)
    th = anatomy.score_thresholds(cfg)
    base = {d: Counter() for d in DISC_NAMES}
    up = down = same = 0
    for f in range(600):
        s = anatomy.make_family(cfg, f, f, 1)[0]
        v0 = anatomy.visit_anatomy(cfg, s, 0, th)
        v1 = anatomy.visit_anatomy(cfg, s, 1, th)
        for d, g0, g1 in zip(DISC_NAMES, v0.grades, v1.grades):
            base[d][g0] += 1
            up += g1 > g0
            down += g1 < g0
            same += g1 == g0
    for d in DISC_NAMES:
        want = np.array(SPIDER_GRADE_COUNTS[d], float)
        got = np.array([base[d][g] for g in (1, 2, 3, 4)], float)
        assert np.abs(got / got.sum() - want / want.sum()).max() < 0.07, (d, got)
    assert down == 0 and up > 0.3 * (up + same)


def test_rater_noise_moves_the_configured_share_to_adjacent_grades():
    cfg = SynthConfig(subjects=1, rater_noise=0.2, graded_fraction=1.0, followup_fraction=0.0)
    th = anatomy.score_thresholds(cfg)
    moved = total = 0
    for f in range(400):
        v = anatomy.visit_anatomy(cfg, anatomy.make_family(cfg, f, f, 1)[0], 0, th)
        for g, t in zip(v.grades, v.true_grades):
            assert abs(g - t) <= 1
            moved += g != t
            total += 1
    # flips at the ends of the scale are clipped, so slightly fewer than 20 % move
    assert 0.13 <= moved / total <= 0.22


def test_twins_share_family_and_correlated_anatomy():
    cfg = SynthConfig(subjects=2)
    corr_twin, corr_other = [], []
    for f in range(60):
        a, b = anatomy.make_family(cfg, f, 2 * f, 2)
        c = anatomy.make_family(cfg, 1000 + f, 5000 + f, 1)[0]
        assert a.family_id == b.family_id != c.family_id
        corr_twin.append((a.vb["depth"].mean(), b.vb["depth"].mean()))
        corr_other.append((a.vb["depth"].mean(), c.vb["depth"].mean()))
    r_twin = np.corrcoef(np.array(corr_twin).T)[0, 1]
    r_other = np.corrcoef(np.array(corr_other).T)[0, 1]
    assert r_twin > 0.3 and abs(r_other) < r_twin - 0.2


def test_scanner_modes():
    s = anatomy.make_family(SynthConfig(followup_fraction=1.0), 0, 0, 1)[0]
    paper = [anatomy.acquisition(SynthConfig(), s, v).field_strength for v in range(2)]
    assert paper == [1.0, 1.5]
    mixed = SynthConfig(scanner_mode="mixed")
    fs = {anatomy.acquisition(mixed, anatomy.make_family(mixed, f, f, 1)[0], 0).field_strength for f in range(30)}
    assert fs == {1.5, 3.0}  # SPIDER's protocols, drawn per scan independently of the visit


def test_spider_label_numbering():
    assert VERTEBRA_LABELS["L5"] == 1 and VERTEBRA_LABELS["T12"] == 6 and VERTEBRA_LABELS["S1"] == 26
    assert DISC_LABELS["L5-S1"] == 201 and DISC_LABELS["T12-L1"] == 206 and DISC_LABELS["T11-T12"] == 207
    names = label_names()
    assert names[100] == "canal" and names[203] == "L3-L4" and names[3] == "L3"


def test_config_round_trip_and_presets():
    cfg = preset("tiny", seed=5)
    assert SynthConfig.from_dict(cfg.to_dict()) == cfg
    assert preset("paper").subjects == 1016
    with pytest.raises(Exception, match="unknown synth knob"):
        SynthConfig.from_dict({"bogus": 1})
    assert dataclasses.replace(cfg, subjects=7).validate().subjects == 7
