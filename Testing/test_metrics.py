"""Classification metrics against hand-computed confusion matrices."""

import numpy as np
import pytest

from SpineSSLLib import metrics

# Hand example (3 classes, 9 samples):
#   true 0: predicted 0,0,1      -> row [2,1,0], recall 2/3
#   true 1: predicted 1,2        -> row [0,1,1], recall 1/2
#   true 2: predicted 2,2,2,0    -> row [1,0,3], recall 3/4
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 2, 0]


def test_confusion_matrix_by_hand():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    # extra classes that never occur still get rows/columns
    assert metrics.confusion_matrix(Y_TRUE, Y_PRED, num_classes=4).shape == (4, 4)


def test_average_class_accuracy_is_mean_diagonal_of_row_normalised():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    norm = metrics.normalize_rows(cm)
    np.testing.assert_allclose(norm.sum(axis=1), 1.0)
    np.testing.assert_allclose(metrics.per_class_recall(cm), [2 / 3, 1 / 2, 3 / 4])
    assert metrics.average_class_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    # plain accuracy differs: 6/9
    assert metrics.accuracy(cm) == pytest.approx(6 / 9)


def test_average_class_accuracy_ignores_absent_true_class():
    # class 1 never occurs in truth but is predicted once
    cm = metrics.confusion_matrix([0, 0, 2, 2], [0, 1, 2, 2], num_classes=3)
    rec = metrics.per_class_recall(cm)
    assert np.isnan(rec[1])
    assert metrics.average_class_accuracy(cm) == pytest.approx((0.5 + 1.0) / 2)


def test_linear_weighted_kappa_by_hand():
    cm = metrics.confusion_matrix(Y_TRUE, Y_PRED)
    # weighted disagreement observed = 0.5 + 0.5 + 1 = 2; expected = 38/9 -> kappa = 1 - 18/38
    assert metrics.weighted_kappa(cm, "linear") == pytest.approx(20 / 38)


def test_kappa_matches_sklearn_and_limits():
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score

    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.6, t, rng.integers(0, 4, 300))
    cm = metrics.confusion_matrix(t, p, 4)
    for w, sk in (("linear", "linear"), ("quadratic", "quadratic"), ("none", None)):
        assert metrics.weighted_kappa(cm, w) == pytest.approx(cohen_kappa_score(t, p, weights=sk))
    assert metrics.average_class_accuracy(cm) == pytest.approx(balanced_accuracy_score(t, p))
    perfect = metrics.confusion_matrix(t, t, 4)
    assert metrics.weighted_kappa(perfect) == pytest.approx(1.0)
    assert metrics.average_class_accuracy(perfect) == 1.0


def test_report_dict_and_png(tmp_path):
    rep = metrics.classification_report(Y_TRUE, Y_PRED, class_names=["g1", "g2", "g3"])
    d = rep.to_dict()
    assert d["n"] == 9 and d["confusion"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert d["per_class_recall"]["g2"] == pytest.approx(0.5)
    assert d["kappa_linear"] == pytest.approx(20 / 38)
    png = tmp_path / "cm.png"
    metrics.save_confusion_png(png, rep.confusion, rep.class_names)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over


def test_bad_labels_rejected():
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 5], [0, 1], num_classes=3)


def test_roc_auc_by_hand_and_vs_sklearn():
    from sklearn.metrics import roc_auc_score

    # positives 0.9, 0.4; negatives 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert metrics.roc_auc([0.9, 0.4, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.75)
    assert metrics.roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # tie counts half
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # many ties
    assert metrics.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(metrics.roc_auc([1, 2], [1, 1]))


def test_mean_ci95():
    m, h = metrics.mean_ci95([0.6, 0.7, 0.8])
    assert m == pytest.approx(0.7)
    # t(0.975, 2) = 4.3027; sd = 0.1; half-width = 4.3027 * 0.1 / sqrt(3)
    assert h == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    assert np.isnan(metrics.mean_ci95([0.5])[1])
