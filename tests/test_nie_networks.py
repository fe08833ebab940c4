"""Unit tests: the networks of Nie et al. 2018 (2.5D UNet generator, D1 critic, D2 dense FCN)."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from medsyn.errors import ConfigError
from medsyn.models.discriminators.nie import GlobalDiscriminator, LocalDiscriminator
from medsyn.models.generators.unet25d import UNet25D
from medsyn.models.registry import DISCRIMINATORS, GENERATORS


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def has_sn(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight") and any(
        type(p).__name__ == "_SpectralNorm" for p in module.parametrizations.weight
    )


def conv(cin, cout, k=3, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def unet_params(in_ch, out_ch, base, depth, skip=True):
    """Independent count: biasless convs + BN (2 per channel), transposed 2x2 convs, 1x1 head."""
    w = [base * 2**i for i in range(depth + 1)]
    total, c = 0, in_ch
    for width in w:  # encoder levels + bottleneck
        total += conv(c, width) + 2 * width + conv(width, width) + 2 * width
        c = width
    for lvl in reversed(range(depth)):
        total += conv(w[lvl + 1], w[lvl], k=2, bias=True)
        cin = 2 * w[lvl] if skip else w[lvl]
        total += conv(cin, w[lvl]) + 2 * w[lvl] + conv(w[lvl], w[lvl]) + 2 * w[lvl]
    return total + conv(w[0], out_ch, k=1, bias=True)


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("base, expected_m", [(32, 1.9), (64, 7.7)])
def test_unet_parameter_count_matches_paper_scale(base, expected_m):
    net = UNet25D(in_channels=5, base=base, depth=3)
    assert n_params(net) == unet_params(5, 1, base, 3)
    assert n_params(net) / 1e6 == pytest.approx(expected_m, abs=0.05)


def test_unet_shapes_paper_patch_and_tanh_range():
    net = UNet25D(in_channels=5, base=8).eval()
    y = net(torch.randn(2, 5, 144, 144) * 5)
    assert y.shape == (2, 1, 144, 144)
    assert y.abs().max() < 1


@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (240, 240)])
def test_unet_any_size_divisible_by_2_pow_depth(hw):
    net = UNet25D(in_channels=3, base=4)
    assert net(torch.randn(1, 3, *hw)).shape == (1, 1, *hw)


def test_unet_depth_changes_levels_and_multiple():
    net = UNet25D(in_channels=1, base=4, depth=2)
    assert len(net.encoders) == 2 and len(net.ups) == 2 and net.size_multiple == 4
    assert net(torch.randn(1, 1, 12, 20)).shape == (1, 1, 12, 20)


def test_unet_rejects_size_not_divisible():
    net = UNet25D(in_channels=5, base=4)
    with pytest.raises(ConfigError, match="divisible by 8"):
        net(torch.randn(1, 5, 100, 100))


def test_unet_rejects_wrong_channels():
    with pytest.raises(ConfigError, match=r"\(B, 5, H, W\)"):
        UNet25D(in_channels=5, base=4)(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize(
    "kwargs, key",
    [({"norm": "group"}, "norm"), ({"final_activation": "sigmoid"}, "final_activation"), ({"base": 0}, "base")],
)
def test_unet_bad_options_are_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        UNet25D(**kwargs)


def test_unet_linear_output_option_is_unbounded():
    net = UNet25D(in_channels=1, base=4, final_activation="none")
    with torch.no_grad():
        net.head.bias.fill_(5.0)
    assert net(torch.zeros(1, 1, 16, 16)).min() > 1


def test_fcn_baseline_has_no_skip_connections():
    unet = UNet25D(in_channels=5, base=8)
    fcn = UNet25D(in_channels=5, base=8, skip=False)
    assert n_params(fcn) == unet_params(5, 1, 8, 3, skip=False) < n_params(unet)
    # decoder input width: concatenation doubles it in the UNet only
    assert [d[0].in_channels for d in unet.decoders] == [64, 32, 16]
    assert [d[0].in_channels for d in fcn.decoders] == [32, 16, 8]
    assert fcn(torch.randn(1, 5, 32, 32)).shape == (1, 1, 32, 32)


def test_fcn_output_depends_on_input_only_through_the_bottleneck():
    """Zeroing the bottleneck makes the FCN's output input-independent; the UNet's skips still carry the input."""
    for skip in (False, True):
        net = UNet25D(in_channels=1, base=4, skip=skip, norm="none").eval()
        net.bottleneck.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        a, b = net(torch.randn(1, 1, 16, 16)), net(torch.randn(1, 1, 16, 16))
        assert (not torch.allclose(a, b)) == skip


def test_unet_all_norm_options_build_and_backprop():
    for norm in ("batch", "instance", "none"):
        net = UNet25D(in_channels=2, base=4, norm=norm)
        net(torch.randn(2, 2, 16, 16)).mean().backward()
        assert all(p.grad is not None for p in net.parameters())


# ----------------------------------------------------------------------------- D1


@pytest.fixture(scope="module")
def paper_d1():
    """D1 at the paper's 144 x 144 patches (43 M parameters): built once for this module."""
    return GlobalDiscriminator(in_channels=1, input_size=144)


def test_d1_layers_and_spectral_norm_placement(paper_d1):
    d1 = paper_d1
    convs = [m for m in d1.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in d1.modules() if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [l.out_features for l in linears] == [512, 128, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d1.modules()) == 3
    assert sum(isinstance(m, nn.MaxPool2d) for m in d1.modules()) == 3
    assert all(has_sn(m) for m in convs + linears[:2])
    assert not parametrize.is_parametrized(linears[-1]) and linears[-1] is d1.head
    assert not any(isinstance(m, nn.Sigmoid) for m in d1.modules())


def test_d1_parameter_count_at_144(paper_d1):
    d1 = paper_d1
    assert d1.flat_features == 256 * 18 * 18
    convs = conv(1, 32) + conv(32, 64) + conv(64, 128) + conv(128, 256, bias=True)
    bns = 2 * (32 + 64 + 128)
    fcs = (82944 * 512 + 512) + (512 * 128 + 128) + (128 + 1)
    assert n_params(d1) == convs + bns + fcs == 42_921_697
    assert d1(torch.randn(2, 1, 144, 144)).shape == (2, 1)
    # conditioning on 5 source slices adds input channels only
    cond = GlobalDiscriminator(in_channels=6, input_size=144, spectral_norm=False)
    assert n_params(cond) - n_params(d1) == 5 * 9 * 32


def test_d1_forward_and_unbounded_output():
    d1 = GlobalDiscriminator(
        in_channels=2, input_size=(16, 24), channels=(4, 8, 8), conv_channels=8, fc_features=(16, 8)
    )
    with torch.no_grad():
        d1.head.bias.fill_(-7.0)
    out = d1(torch.randn(3, 2, 16, 24))
    assert out.shape == (3, 1) and (out < -1).all()


def test_d1_rejects_other_patch_size():
    d1 = GlobalDiscriminator(input_size=32, channels=(4, 4, 4), conv_channels=4, fc_features=(8, 8))
    with pytest.raises(ConfigError, match="input_size"):
        d1(torch.randn(1, 1, 48, 48))


def test_d1_norm_and_sn_options():
    small = dict(input_size=16, channels=(4, 4, 4), conv_channels=4, fc_features=(8, 8))
    layer = GlobalDiscriminator(norm="layer", **small)
    assert sum(isinstance(m, nn.GroupNorm) and m.num_groups == 1 for m in layer.modules()) == 3
    none = GlobalDiscriminator(norm="none", **small)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in none.modules())
    plain = GlobalDiscriminator(spectral_norm=False, **small)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    with pytest.raises(ConfigError, match="norm"):
        GlobalDiscriminator(norm="instance", **small)


def test_d1_spectral_norm_bounds_largest_singular_value():
    d1 = GlobalDiscriminator(input_size=16, channels=(4, 4, 4), conv_channels=4, fc_features=(8, 8))
    for _ in range(30):  # power iteration runs once per training-mode forward
        d1(torch.randn(2, 1, 16, 16))
    d1.eval()
    w = d1.fc[0].weight  # the normalised weight
    assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)
    assert torch.linalg.matrix_norm(d1.head.weight, ord=2).item() != pytest.approx(1.0, abs=1e-3)


# ----------------------------------------------------------------------------- D2


def d2_params(in_ch, base):
    down = conv(in_ch, base) + 2 * base + conv(base, 2 * base) + 4 * base + conv(2 * base, 4 * base) + 8 * base
    up = conv(4 * base, 2 * base, k=2) + 4 * base + conv(2 * base, base, k=2) + 2 * base
    up += conv(base, base, k=2) + 2 * base
    return down + up + conv(base, 1, bias=True)


def test_d2_layers_spectral_norm_and_count():
    d2 = LocalDiscriminator(in_channels=1, base=32)
    convs = [m for m in d2.modules() if isinstance(m, nn.Conv2d)]
    ups = [m for m in d2.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 4 and len(ups) == 3  # 3 down convs + last conv, 3 up-sampling stages
    assert sum(isinstance(m, nn.MaxPool2d) for m in d2.modules()) == 3
    assert all(has_sn(m) for m in convs[:-1] + ups)
    assert convs[-1] is d2.head and not parametrize.is_parametrized(d2.head)
    assert d2.head.out_channels == 1
    assert n_params(d2) == d2_params(1, 32) == 138_497


def test_d2_confidence_map_in_unit_interval_and_logits():
    d2 = LocalDiscriminator(in_channels=1, base=4).eval()
    x = torch.randn(2, 1, 144, 144)
    m = d2(x)
    logits = d2(x, return_logits=True)
    assert m.shape == logits.shape == (2, 1, 144, 144)
    assert (m >= 0).all() and (m <= 1).all()
    assert torch.allclose(torch.sigmoid(logits), m)


def test_d2_without_upsampling_predicts_at_one_eighth_then_interpolates():
    d2 = LocalDiscriminator(in_channels=3, base=4, upsampling=False)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in d2.modules())
    seen = {}
    d2.head.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    out = d2(torch.randn(2, 3, 64, 32))
    assert seen["shape"] == (2, 1, 8, 4)
    assert out.shape == (2, 1, 64, 32) and (out >= 0).all() and (out <= 1).all()
    assert has_sn(d2.down[0]) and not parametrize.is_parametrized(d2.head)


def test_d2_rejects_size_not_divisible_by_8():
    with pytest.raises(ConfigError, match="divisible by 8"):
        LocalDiscriminator(base=4)(torch.randn(1, 1, 20, 20))


def test_d2_no_spectral_norm_option():
    d2 = LocalDiscriminator(base=4, spectral_norm=False, norm="none")
    assert not any(parametrize.is_parametrized(m) for m in d2.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d2.modules())


# ----------------------------------------------------------------------------- registries


def test_registered_by_name():
    assert GENERATORS.get("unet25d") is UNet25D
    assert DISCRIMINATORS.get("nie_global") is GlobalDiscriminator
    assert DISCRIMINATORS.get("nie_local") is LocalDiscriminator
    with pytest.raises(ConfigError, match="did you mean 'unet25d'"):
        GENERATORS.get("unet2.5d")
