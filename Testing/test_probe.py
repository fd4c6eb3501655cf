"""Frozen-trunk probe features (issue #13): VB volumes at full size and disc volumes already at the
network's scale (as grading feeds them) both reach the trunk; the pretrained reproduce run crashed
here on disc volumes at input_scale 0.5 before the fix."""

import numpy as np
import pytest
import torch

from SpineSSLLib.grading import IVD_HW
from SpineSSLLib.models import ModelConfig, VGGMNet
from SpineSSLLib.probe import pixel_features, trunk_features

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_trunk_features_take_full_size_vbs_and_downscaled_discs():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("small", width=0.0625, fc6=32, fc7=16, input_scale=0.5)
    net = VGGMNet(cfg, 7).eval()
    rng = np.random.default_rng(0)
    vb = rng.random((3, 9, 224, 224)).astype(np.float32)
    f_full = trunk_features(net, vb, batch_size=2)
    with torch.inference_mode():
        ref = net.trunk(net.prepare_input(torch.from_numpy(vb).unsqueeze(1))).flatten(1).numpy()
    np.testing.assert_allclose(f_full, ref, rtol=1e-5, atol=1e-6)
    # the same VBs already at the network's scale give the same features
    small = torch.nn.functional.adaptive_avg_pool3d(torch.from_numpy(vb).unsqueeze(1), (9, *net.net_hw))
    np.testing.assert_allclose(trunk_features(net, small[:, 0].numpy()), ref, rtol=1e-5, atol=1e-6)
    # discs at the network's scale (56 x 112 here): features, one row per disc
    ivd = rng.random((4, 9, *cfg.net_hw(IVD_HW))).astype(np.float32)
    f_ivd = trunk_features(net, ivd)
    assert f_ivd.shape[0] == 4 and f_ivd.shape[1] > 0 and np.isfinite(f_ivd).all()
    assert not np.allclose(f_ivd[0], f_ivd[1])
    assert pixel_features(ivd).shape == (4, 9 * 14 * 28)
