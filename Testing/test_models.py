"""Network shapes for both presets and both input sizes, sizes/FLOPs, Siamese weight sharing."""

import pytest
import torch

from SpineSSLLib import models as M
from SpineSSLLib.errors import ConfigError

torch.set_num_threads(1)


@pytest.mark.parametrize("preset", ["paper", "small"])
@pytest.mark.parametrize("hw", [(224, 224), (112, 224)])
def test_shapes_meta(preset, hw):
    """Every preset x input size gives (B, fc7) embeddings and (B, classes) logits."""
    cfg = M.ModelConfig.preset(preset)
    with torch.device("meta"):
        net = M.VGGMNet(cfg, 7, hw)
        emb, logits = net(torch.empty(3, 1, 9, *hw))
    assert emb.shape == (3, cfg.fc7) and logits.shape == (3, 7)


def test_paper_sizes_match_hand_count():
    cfg = M.ModelConfig.preset("paper", norm="lrn")
    assert cfg.channels() == (96, 256, 512, 512, 512) and cfg.fc7 == 1024 and cfg.fc6 == 4096
    assert M.trunk_out_hw(cfg, (224, 224)) == (6, 6)     # 224 -conv1-> 109 -pool-> 54 -conv2-> 26 -> 13 -> 6
    assert M.trunk_out_hw(cfg, (112, 224)) == (3, 6)
    d = M.describe(cfg, 7, (224, 224))
    conv = [(1, 96, 3 * 7 * 7), (96, 256, 3 * 5 * 5), (256, 512, 27), (512, 512, 81), (512, 512, 9)]
    trunk = sum(i * o * k + o for i, o, k in conv)
    fc = (512 * 36 * 4096 + 4096) + (4096 * 1024 + 1024) + (1024 * 7 + 7)
    assert d["trunk_parameters"] == trunk and d["parameters"] == trunk + fc
    # MACs by hand: output voxels x (in_channels x kernel volume)
    macs = (9 * 109 * 109 * 96 * 147 + 9 * 26 * 26 * 256 * 96 * 75 + 9 * 13 * 13 * 512 * 256 * 27
            + 13 * 13 * 512 * 512 * 81 + 13 * 13 * 512 * 512 * 9 + 512 * 36 * 4096 + 4096 * 1024 + 1024 * 7)
    assert d["macs_per_volume"] == macs
    # batch norm after every conv adds a scale and a shift per channel
    bn = M.describe(M.ModelConfig.preset("paper", norm="batch"), 7, (224, 224))
    assert bn["trunk_parameters"] == trunk + 2 * sum(cfg.channels())


def test_small_preset_real_forward_both_sizes():
    torch.manual_seed(0)
    cfg = M.ModelConfig.preset("small")
    for hw in [(224, 224), (112, 224)]:
        net = M.VGGMNet(cfg, 7, hw).eval()
        x = torch.randn(2, 1, 9, *hw)
        emb, logits = net(x)
        assert emb.shape == (2, cfg.fc7) and logits.shape == (2, 7) and torch.isfinite(emb).all()
        # a pre-downscaled input (what the cache may hold) gives the same result
        small = torch.nn.functional.adaptive_avg_pool3d(x, (9, *cfg.net_hw(hw)))
        assert torch.allclose(net(small)[0], emb, atol=1e-5)
    with pytest.raises(ValueError, match="expected input"):
        net(torch.randn(2, 1, 8, 112, 224))


def test_presets_share_one_definition_and_validate():
    small, paper = M.ModelConfig.preset("small"), M.ModelConfig.preset("paper")
    assert type(M.VGGMNet(small, 7).trunk) is M.Trunk
    assert M.describe(small)["gflops_per_volume"] < M.describe(paper)["gflops_per_volume"] / 30
    assert M.ModelConfig.from_dict(small.to_dict()) == small
    with pytest.raises(ConfigError):
        M.ModelConfig.preset("huge")
    with pytest.raises(ConfigError):
        M.ModelConfig.from_dict({"widht": 1})
    with pytest.raises(ConfigError, match="too small"):
        M.VGGMNet(small, 7, (32, 32))


def test_siamese_shares_weights_in_one_call():
    torch.manual_seed(0)
    net = M.VGGMNet(M.ModelConfig.preset("small", width=0.125, fc6=64, fc7=32), 7).eval()
    siam = M.SiameseNet(net)
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    a, b = torch.randn(2, 1, 9, 224, 224), torch.randn(2, 1, 9, 224, 224)
    ea, eb, la, lb = siam(a, b)
    assert len(calls) == 1                      # both branches in a single forward call
    assert len(list(siam.parameters())) == len(list(net.parameters()))
    assert torch.allclose(ea, net(a)[0], atol=1e-5) and torch.allclose(eb, net(b)[0], atol=1e-5)
    assert M.unwrap(siam) is net


def test_aux_heads_optional():
    cfg = M.ModelConfig.preset("small", width=0.125, fc6=64, fc7=32, aux_heads={"sex": 2, "age_bin": 5})
    net = M.VGGMNet(cfg, 7).eval()
    emb, _ = net(torch.randn(1, 1, 9, 224, 224))
    out = net.aux_logits(emb)
    assert out["sex"].shape == (1, 2) and out["age_bin"].shape == (1, 5)
    assert len(M.VGGMNet(M.ModelConfig.preset("small"), 7).aux) == 0


def test_channels_last_keeps_results():
    torch.manual_seed(0)
    net = M.VGGMNet(M.ModelConfig.preset("small", width=0.125, fc6=64, fc7=32), 7).eval()
    x = torch.randn(1, 1, 9, 224, 224)
    ref = net(x)[0]
    M.to_channels_last(net)
    assert net.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(net(x.contiguous(memory_format=torch.channels_last_3d))[0], ref, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 12, 3, 5, 7), (2, 7, 6, 5), (3, 5, 4)])
def test_lrn_equals_torch_local_response_norm_values_and_gradients(shape):
    from torch import nn

    from SpineSSLLib.models import LRN

    torch.manual_seed(0)
    x = torch.relu(torch.randn(*shape, dtype=torch.float64)) * 10
    for beta in (0.75, 0.6):
        ours, ref = LRN(5, alpha=5e-4, beta=beta, k=2.0), nn.LocalResponseNorm(5, alpha=5e-4, beta=beta, k=2.0)
        with torch.no_grad():
            assert torch.allclose(ours(x), ref(x), rtol=1e-10, atol=1e-12)   # inference path (in place)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        w = torch.randn(*shape, dtype=torch.float64)
        ga, = torch.autograd.grad((ours(xa) * w).sum(), xa)
        gb, = torch.autograd.grad((ref(xb) * w).sum(), xb)
        assert torch.allclose(ga, gb, rtol=1e-8, atol=1e-10)


def test_lrn_channels_last_and_training_forward_match_the_contiguous_inference_path():
    """The fused LRN (hand-written backward) on a contiguous input and the 1x1-convolution path of a
    channels-last input give the same values and gradients; the training forward equals the
    inference forward."""
    from SpineSSLLib.models import LRN

    torch.manual_seed(1)
    x = torch.relu(torch.randn(2, 9, 3, 6, 5, dtype=torch.float64)) * 5
    w = torch.randn_like(x)
    lrn = LRN(5, alpha=5e-4, beta=0.75, k=2.0)
    with torch.no_grad():
        ref = lrn(x)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        xa = x.contiguous(memory_format=fmt).requires_grad_()
        y = lrn(xa)
        assert torch.allclose(y, ref, rtol=1e-12, atol=0)
        grads.append(torch.autograd.grad((y * w).sum(), xa)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    assert torch.autograd.gradcheck(lambda t: lrn(t), (x[:1, :, :1, :3, :2].clone().requires_grad_(),))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("norm", ["batch", "lrn", "group", "none"])
def test_fold2d_conv_impl_matches_the_3d_reference_forward_and_backward(norm):
    """conv_impl="fold2d" (depth-unfold + conv2d, issue #17) is the same function as the 3D
    reference on the same random weights: embeddings, logits, every parameter gradient, the input
    gradient and the batch-norm running statistics agree to max |diff| <= 1e-4 of the largest value
    (of the tensor; of the layer for parameter gradients) in fp32, in training mode (batch
    statistics) and in eval mode."""
    torch.manual_seed(0)
    ref = M.VGGMNet(M.ModelConfig.preset("small", norm=norm, width=0.25, fc6=32, fc7=16, dropout=0.0),
                    7, (112, 112))
    for p in ref.parameters():  # random, not only the initialisation's pattern (bias, norm scale too)
        with torch.no_grad():
            p.add_(torch.randn_like(p) * 0.05)
    fold = M.VGGMNet(M.ModelConfig.from_dict({**ref.config.to_dict(), "conv_impl": "fold2d"}), 7, (112, 112))
    fold.load_state_dict(ref.state_dict())   # the same parameters and buffers
    assert isinstance(fold.trunk.conv1, M.FoldConv3d) and fold.trunk.conv_impl == "fold2d"
    x = torch.rand(3, 1, 9, 112, 112)

    def close(a, b):
        return (a - b).abs().max().item() <= 1e-4 * max(b.abs().max().item(), 1e-12)

    for net in (ref, fold):
        net.train()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ea, la), (eb, lb) = fold(xa), ref(xb)
    assert ea.shape == eb.shape and close(ea, eb) and close(la, lb)
    w = torch.randn_like(ea)
    ((ea * w).sum() + la.square().sum()).backward()
    ((eb * w).sum() + lb.square().sum()).backward()
    assert close(xa.grad, xb.grad)
    grads = dict(ref.named_parameters())
    for name, pa in fold.named_parameters():
        # relative to the largest gradient of the same layer: a conv bias before batch norm has a
        # true gradient of 0 (the norm removes it), so its own values are rounding noise
        layer = max(g.grad.abs().max().item() for n, g in grads.items() if n.rsplit(".", 1)[0] == name.rsplit(".", 1)[0])
        assert pa.grad is not None and (pa.grad - grads[name].grad).abs().max().item() <= 1e-4 * layer, name
    for (name, ba), (_, bb) in zip(fold.named_buffers(), ref.named_buffers()):
        assert (torch.equal(ba, bb) if not ba.is_floating_point() else close(ba, bb)), name
    fold.eval(), ref.eval()
    with torch.no_grad():
        assert close(fold(x)[0], ref(x)[0]) and close(fold.trunk(x), ref.trunk(x))
        M.to_channels_last(fold)                    # the GPU variant: channels-last conv2d inputs
        assert fold.trunk.conv2.channels_last_2d and close(fold(x)[0], ref(x)[0])
    assert M.count_macs(fold) == M.count_macs(ref)
    with pytest.raises(ConfigError, match="conv_impl"):
        M.ModelConfig.preset("small", conv_impl="2d")


def _fixed_weights(net):
    """Deterministic weights that do not depend on the initialisation code."""
    with torch.no_grad():
        for k, (name, p) in enumerate(sorted(net.named_parameters())):
            n = p.numel()
            p.copy_(((torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + k) + 0.3) * (1.5 / max(1, n // p.shape[0]) ** 0.5))
                    .view_as(p).float())
            if name.endswith("bias"):
                p.mul_(0.01)
    return net


PINNED_TRUNK = [3521.6045, 4395.4639, 3652.7437, 3513.0605, 4385.5840, 3644.8721]
"""pool5 outputs (first two channels, flattened) of the fixed net on the fixed input, recorded from the
reference implementation (main at 9519541)."""


def test_trunk_values_with_fixed_weights_and_input():
    """The trunk's arithmetic is pinned: conv4 collapses the 9 slices with a (9, 3, 3) kernel; an
    implementation of equal cost but other maths (e.g. a max over slices) gives other values."""
    cfg = M.ModelConfig.preset("small", width=0.0625, fc6=8, fc7=4, input_scale=0.5, norm="lrn")
    net = _fixed_weights(M.VGGMNet(cfg, 3, (112, 224))).eval()
    z, y, x = torch.meshgrid(torch.arange(9.0), torch.arange(56.0), torch.arange(112.0), indexing="ij")
    vol = (torch.cos(x * 0.11 + z * 0.7) * torch.sin(y * 0.05 - z * 0.3) + 0.5)[None, None]
    with torch.no_grad():
        out = net.trunk(vol)
    got = out[0, :2].flatten().tolist()
    assert out.shape == (1, cfg.channels()[4], 1, 3)
    assert got == pytest.approx(PINNED_TRUNK, rel=1e-5)


@pytest.mark.usefixtures("one_torch_thread")
def test_fold2d_trains_to_the_same_model_on_the_fixed_seed_cpu_run(tmp_path):
    """Issue #17: the same fixed-seed CPU pretraining (default recipe, SGD at a small learning rate
    so that float rounding is not amplified into another trajectory) with conv_impl 3d and fold2d
    gives the same losses and validation metrics per epoch and the same weights.

    The learning rate is 1e-4: under the default recipe since its self-pairs / appearance
    augmentation (main 25abd38, fe0c08c), lr 1e-3 makes the run itself chaotic — a 1e-6 relative
    perturbation of the 3d run's initial weights moved epoch 2's train loss by 0.8 % (8.929 ->
    8.998; fold2d: 9.004), while at 1e-4 the same perturbation moves it by 2e-6 (measured
    2026-11-29)."""
    import csv

    from pretrain_helpers import cohort_rows, write_cohort

    from SpineSSLLib import checkpoint as ckpt
    from SpineSSLLib.pretrain import load_config, run_pretraining

    write_cohort(tmp_path / "c", cohort_rows(6, frac_long=1.0, three_visit_every=10**9))
    runs = {}
    for impl in ("3d", "fold2d"):
        cfg = load_config(overrides={"model": {"preset": "small", "width": 0.0625, "fc6": 16, "fc7": 8,
                                               "input_scale": 0.25, "conv_impl": impl},
                                     "train": {"max_epochs": 2, "batch_size": 8, "num_workers": 0, "device": "cpu",
                                               "seed": 3, "optimizer": "sgd", "lr": 1e-4}})
        out = tmp_path / impl
        summary = run_pretraining(tmp_path / "c", out, cfg, progress=False)
        log = list(csv.DictReader(open(out / "log.csv")))
        state, meta = ckpt.load_weights(out / "last")
        runs[impl] = (log, state, meta["config"]["model"], summary)
    (la, wa, ca, sa), (lb, wb, cb, sb) = runs["3d"], runs["fold2d"]
    assert ca["conv_impl"] == "3d" and cb["conv_impl"] == "fold2d"
    assert len(la) == len(lb) == 2 and la[0].keys() == lb[0].keys()
    for ra, rb in zip(la, lb):  # losses, accuracies and the first batch's activation / gradient scales
        for k in ra:
            if k != "time_s" and ra[k]:
                assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-3, abs=1e-5), k
    assert sa["best_epoch"] == sb["best_epoch"] and sa["val_level_accuracy"] == sb["val_level_accuracy"]
    # weights relative to the layer's largest value (biases before a norm stay ~0): fold2d vs 3d
    # differ by 2.6e-6 at lr 1e-4 (measured 2026-11-29; 1.4e-3 at lr 1e-3 under the recipe of
    # 2026-11-28), so 5e-3 leaves room for other CPUs' rounding; another function is far outside it
    for k, v in wa.items():
        if v.is_floating_point():
            layer = max(t.abs().max().item() for n, t in wa.items() if n.rsplit(".", 1)[0] == k.rsplit(".", 1)[0])
            assert (wb[k] - v).abs().max().item() <= 5e-3 * layer, k
