"""Losses against hand-computed values and gradients."""

import math

import pytest
import torch

from SpineSSLLib import losses as L
from SpineSSLLib.errors import ConfigError


def test_contrastive_values():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([1, 0, 0, 1])
    # pairs: positive d=5 -> 25; negative d=5, m=6 -> 1; negative d=5 -> 1; positive d=0 -> 0
    assert L.contrastive_loss(a, b, y, margin=6.0).item() == pytest.approx((25 + 1 + 1 + 0) / 4)
    # margin below the distance: negatives cost nothing
    assert L.contrastive_loss(a, b, y, margin=4.0).item() == pytest.approx(25 / 4)
    with pytest.raises(ConfigError):
        L.contrastive_loss(a, b, y, margin=0)


def test_contrastive_gradients():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    b = torch.tensor([[3.0, 4.0], [1.0, 2.5]], requires_grad=True)
    y = torch.tensor([1, 0])
    m = 2.0
    L.contrastive_loss(a, b, y, margin=m).backward()
    n = 2
    # positive: d^2 -> 2(a-b)/n
    assert torch.allclose(a.grad[0], 2 * torch.tensor([-3.0, -4.0]) / n)
    # negative, d = 0.5 < m: (m-d)^2 -> -2(m-d)(a-b)/d / n
    d = 0.5
    expect = -2 * (m - d) * torch.tensor([0.0, -0.5]) / d / n
    assert torch.allclose(a.grad[1], expect, atol=1e-5)
    assert torch.allclose(b.grad, -a.grad, atol=1e-6)


def test_contrastive_finite_gradient_at_zero_distance():
    a = torch.zeros(1, 3, requires_grad=True)
    L.contrastive_loss(a, torch.zeros(1, 3), torch.tensor([0]), margin=1.0).backward()
    assert torch.isfinite(a.grad).all()


def test_class_weights():
    """alpha_c = N / (K n_c) over the classes present (hand-computed), 0 for absent classes."""
    w = L.class_weights([0, 1, 1, 1], 2)
    assert torch.allclose(w, torch.tensor([2.0, 2.0 / 3.0]))
    assert torch.allclose(L.class_weights([0] * 5 + [1] * 5 + [2] * 5, 3), torch.ones(3))
    assert L.class_weights([0, 0, 2, 2], 3).tolist() == [1.0, 0.0, 1.0]
    # 7 levels with unequal counts: N = 20, K = 7
    counts = [1, 2, 3, 4, 5, 3, 2]
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    assert torch.allclose(L.class_weights(labels, 7), torch.tensor([20 / (7 * n) for n in counts]))


def test_level_loss_value_and_gradient():
    z = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]], requires_grad=True)
    t = torch.tensor([0, 1])
    alpha = torch.tensor([2.0, 0.5])
    loss = L.level_loss(z, t, alpha)
    # softmax = (1/4, 3/4): -2 log(1/4) and -0.5 log(3/4), averaged
    assert loss.item() == pytest.approx((2 * math.log(4) + 0.5 * math.log(4 / 3)) / 2, rel=1e-6)
    loss.backward()
    p = torch.tensor([0.25, 0.75])
    assert torch.allclose(z.grad[0], 2.0 * (p - torch.tensor([1.0, 0.0])) / 2, atol=1e-6)
    assert torch.allclose(z.grad[1], 0.5 * (p - torch.tensor([0.0, 1.0])) / 2, atol=1e-6)
    # without alpha it is plain cross-entropy
    assert L.level_loss(z, t).item() == pytest.approx(torch.nn.functional.cross_entropy(z, t).item())


def test_total_loss_combines_with_lambda():
    torch.manual_seed(0)
    ea, eb = torch.randn(4, 8), torch.randn(4, 8)
    la, lb = torch.randn(4, 7), torch.randn(4, 7)
    y, lev = torch.tensor([1, 0, 1, 0]), torch.tensor([0, 3, 6, 2])
    cfg = L.LossConfig(margin=2.0, level_weight=0.5, normalize=False)
    out = L.pretrain_loss(ea, eb, la, lb, y, lev, cfg)
    lc = L.contrastive_loss(ea, eb, y, 2.0)
    ll = torch.nn.functional.cross_entropy(torch.cat([la, lb]), torch.cat([lev, lev]))
    assert out["loss"].item() == pytest.approx((lc + 0.5 * ll).item(), rel=1e-6)
    assert out["level"].item() == pytest.approx(ll.item(), rel=1e-6)


def test_aux_loss_ignores_unknown():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert L.aux_loss(z, torch.tensor([0, -1])).item() == pytest.approx(
        torch.nn.functional.cross_entropy(z[:1], torch.tensor([0])).item())
    assert L.aux_loss(z, torch.tensor([-1, -1])).item() == 0.0


def test_contrastive_on_normalised_embeddings():
    torch.manual_seed(1)
    ea, eb, la = torch.randn(4, 8) * 5, torch.randn(4, 8) * 5, torch.randn(4, 7)
    y, lev = torch.tensor([1, 0, 1, 0]), torch.tensor([0, 3, 6, 2])
    out = L.pretrain_loss(ea, eb, la, la, y, lev, L.LossConfig(margin=0.5, normalize=True))
    lc = L.contrastive_loss(torch.nn.functional.normalize(ea), torch.nn.functional.normalize(eb), y, 0.5)
    assert out["contrastive"].item() == pytest.approx(lc.item(), rel=1e-6)


def test_ntxent_value_by_hand():
    """Two positive pairs and one negative pair: each positive's first volume picks its partner
    among the three second volumes (cosine / T), and vice versa; same-subject volumes other than
    the partner are masked."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.5]])
    y = torch.tensor([1, 1, 0])
    sa, sb = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3])
    t = 0.5
    s = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).t() / t
    rows = [-torch.log_softmax(s[i], 0)[i] for i in (0, 1)]
    cols = [-torch.log_softmax(s[:, i], 0)[i] for i in (0, 1)]
    expect = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    assert L.ntxent_loss(a, b, y, sa, sb, t).item() == pytest.approx(expect.item(), rel=1e-5)
    # a second volume of subject 0 among the columns is not a negative for subject 0's anchor
    sb2 = torch.tensor([0, 1, 0])
    s2 = s.clone()
    s2[0, 2] = -float("inf")
    s2t = s.t().clone()
    s2t[2, 0] = -float("inf")
    rows2 = [-torch.log_softmax(s2[i], 0)[i] for i in (0, 1)]
    cols2 = [-torch.log_softmax(s.t()[i], 0)[i] for i in (0, 1)]
    expect2 = 0.5 * (sum(rows2) / 2 + sum(cols2) / 2)
    assert L.ntxent_loss(a, b, y, sa, sb2, t).item() == pytest.approx(expect2.item(), rel=1e-5)
    # no positive pair: zero, with a gradient path
    z = L.ntxent_loss(a.requires_grad_(), b, torch.tensor([0, 0, 0]), sa, sb, t)
    assert z.item() == 0.0
