"""Backbones x heads, the jhead parameter budget, and the head's start-as-interp design."""

import pytest
import torch

from LowResSegLib.training.models import BACKBONES, JHead, SegModel, count_macs, count_params, model_stats


@pytest.mark.parametrize("r,expected", [(16, 82), (32, 67), (64, 52), (128, 37)])
def test_jhead_parameter_count_c1(r, expected):
    head = JHead(classes=1, input_size=r, output_size=256)
    # chain: (log2(R/r) - 1) x [ConvT(1,1,2,2): 4+1, Conv3x3(1,1): 9+1]; fusion: ConvT(2,2,2,2): 16+2, Conv3x3(2,1): 18+1
    assert count_params(head) == expected
    assert count_params(head) < 200


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("head", ["interp", "jhead"])
def test_every_backbone_with_every_head(backbone, head):
    m = SegModel(backbone, head, 16, 64, width=4).eval()
    outs = m(torch.zeros(3, 1, 16, 16))
    assert [o.shape[-1] for o in outs] == m.scales()
    assert outs[-1].shape == (3, 1, 64, 64)
    assert outs[0].shape == (3, 1, 16, 16)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_full_head_runs_backbone_at_output_size(backbone):
    m = SegModel(backbone, "full", 32, 32, width=4).eval()
    assert m.config["input_size"] == 32
    assert [o.shape for o in m(torch.zeros(1, 1, 32, 32))] == [(1, 1, 32, 32)]
    assert m.name == "%s-full-32" % backbone


def test_model_names():
    assert SegModel("elunet", "jhead", 32, 256, width=2).name == "elunet-jhead-32to256"
    assert SegModel("unet", "interp", 16, 256, width=2).name == "unet-interp-16to256"


def test_jhead_starts_as_interp():
    torch.manual_seed(0)
    a = SegModel("elunet", "jhead", 16, 64, width=2).eval()
    b = SegModel("elunet", "interp", 16, 64, width=2).eval()
    b.backbone.load_state_dict(a.backbone.state_dict())
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(a(x)[-1], b(x)[-1], atol=1e-6)
    # and it is not frozen there: a changed fusion changes the output
    with torch.no_grad():
        a.head.fuse[1].weight.fill_(0.1)
    assert not torch.allclose(a(x)[-1], b(x)[-1], atol=1e-3)


def test_no_tied_weights_in_elunet():
    m = SegModel("elunet", "jhead", 32, 256, width=2)
    ids = [id(p) for p in m.parameters()]
    assert len(ids) == len(set(ids))
    mods = [id(x) for x in m.modules()]
    assert len(mods) == len(set(mods))


def test_macs_match_reference_at_n16():
    # REFERENCE.md: ELU-Net n=16 backbone MACs 44.8 M at 16², 179 M at 32², 11.47 G at 256²
    for r, ref in ((16, 44.8e6), (32, 179e6)):
        m = SegModel("elunet", "interp", r, 256, width=16)
        assert abs(count_macs(m.backbone, r) - ref) / ref < 0.01
    stats = model_stats(SegModel("elunet", "jhead", 32, 256, width=8))
    assert stats["params"]["head"] == 67
    assert 1e6 < stats["macs"]["head"] < 3e6


@pytest.mark.parametrize("kwargs,msg", [
    (dict(backbone="vgg", head="jhead", input_size=32, output_size=256), "unknown backbone"),
    (dict(backbone="elunet", head="magic", input_size=32, output_size=256), "unknown head"),
    (dict(backbone="elunet", head="jhead", input_size=24, output_size=256), "divisible"),
    (dict(backbone="unet", head="jhead", input_size=48, output_size=256), r"x 2\^k"),
])
def test_bad_model_configs(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        SegModel(width=2, **kwargs)


@pytest.mark.parametrize("r,big_r", [(16, 256), (32, 256), (64, 256), (128, 256), (16, 64)])
def test_subpixel_export_form_equals_the_trained_head(r, big_r):
    """The export-time rewrite (Conv3x3 at low res + pixel shuffle) computes the same function."""
    from LowResSegLib.training.models import FastJHead

    torch.manual_seed(r)
    m = SegModel("elunet", "jhead", r, big_r, width=2).eval()
    with torch.no_grad():
        for p in m.head.parameters():
            p.normal_(0, 0.5)  # trained-like, non-zero, with biases (exercises the border constant)
        logits = torch.randn(3, 1, r, r)
        want = m.head(logits)[-1]
        got = FastJHead(m.head, r)(logits)[-1]
    assert got.shape == want.shape == (3, 1, big_r, big_r)
    assert torch.allclose(got, want, atol=1e-5)
    assert want.abs().max() > 0.5  # not trivially zero


@pytest.mark.parametrize("r,R", [(16, 256), (32, 256), (64, 128)])
def test_training_subpixel_head_gives_the_plain_heads_outputs_and_gradients(r, R):
    """Issue 28: training runs the J-head in the sub-pixel form; same function, same gradients."""
    import torch

    from LowResSegLib.training.models import JHead

    torch.manual_seed(0)
    head = JHead(1, r, R)
    for p in head.parameters():  # the fusion conv starts at zero: give every weight a value
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(3, 1, r, r, requires_grad=True)
    results = []
    for subpixel in (False, True):
        head.subpixel = subpixel
        head.zero_grad()
        x.grad = None
        outs = head(x)
        sum((o * torch.linspace(-1, 1, o.shape[-1])).sum() for o in outs).backward()
        results.append(([o.detach().clone() for o in outs], x.grad.clone(),
                        [p.grad.clone() for p in head.parameters()]))
    (plain, gx0, gp0), (fast, gx1, gp1) = results
    assert [o.shape for o in plain] == [o.shape for o in fast]
    for a, b in zip(plain, fast):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(gx0, gx1, atol=1e-3, rtol=1e-4)
    for a, b in zip(gp0, gp1):
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-4), (a - b).abs().max()
    assert not torch.allclose(plain[-1], torch.zeros_like(plain[-1]))


@pytest.mark.parametrize("n_in,n_out", [(16, 256), (32, 128), (64, 256), (32, 64)])
def test_training_bilinear_is_interpolate(n_in, n_out):
    """Issue 28: in training the heads upsample with two matrix products; same values and gradients."""
    import torch
    import torch.nn.functional as F

    from LowResSegLib.training.models import _bilinear_for_training

    x = torch.randn(3, 2, n_in, n_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, n_out, n_out, dtype=torch.float64)
    ref = F.interpolate(x, size=(n_out, n_out), mode="bilinear", align_corners=False)
    (gx_ref,) = torch.autograd.grad((ref * w).sum(), x)
    got = _bilinear_for_training(x.float(), n_out)
    assert torch.allclose(got.double(), ref, atol=1e-5)
    xf = x.detach().float().requires_grad_(True)
    (gx,) = torch.autograd.grad((_bilinear_for_training(xf, n_out) * w.float()).sum(), xf)
    assert torch.allclose(gx.double(), gx_ref, atol=1e-4)
