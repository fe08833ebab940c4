"""Eval-time speed-ups (BatchNorm folding, bf16 gate) and the predict path's inference settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsyn.config import RunConfig
from medsyn.errors import ConfigError
from medsyn.inference import speedups
from medsyn.inference.predict import inference_generator, predict_case_arrays
from medsyn.inference.speedups import ConvReLU2d, amp_dtype, fold_batchnorm, fuse_conv_relu, prepare_for_inference
from medsyn.methods import METHODS
from medsyn.models.generators.unet25d import UNet25D


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def test_folded_unet_equals_the_original_in_eval_mode_and_leaves_it_untouched():
    torch.manual_seed(0)
    model = randomise_batchnorm(UNet25D(5, 1, base=8, depth=2)).train()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 10 and model.training
    x = torch.randn(3, 5, 32, 32)
    with torch.inference_mode():
        ref = model.eval()(x)
        out = folded(x)
    assert (out - ref).abs().max() <= 1e-4


def test_only_batchnorm_after_a_convolution_with_running_stats_is_folded():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3, track_running_stats=False),  # batch statistics: kept
        torch.nn.ReLU(), torch.nn.BatchNorm2d(3),  # follows a ReLU: kept
        torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3),  # folded
    )
    folded = fold_batchnorm(model)
    assert [type(m).__name__ for m in folded] == ["Conv2d", "BatchNorm2d", "ReLU", "BatchNorm2d", "Conv2d", "Identity"]
    x = torch.randn(2, 2, 8, 8)
    with torch.inference_mode():
        assert (folded(x) - model.eval()(x)).abs().max() <= 1e-5


needs_fused_ops = pytest.mark.skipif(speedups._pointwise_ops() is None, reason="no oneDNN fused convolution ops")


@needs_fused_ops
@pytest.mark.parametrize("base", [8, 16])
def test_fused_conv_relu_unet_equals_the_folded_one(base):
    """Inference preparation (fold + conv/ReLU fusion + split concatenation) keeps the fp32 values."""
    torch.manual_seed(0)
    model = randomise_batchnorm(UNet25D(5, 1, base=base, depth=3)).eval()
    prepared = prepare_for_inference(model)
    fused = [m for m in prepared.modules() if isinstance(m, ConvReLU2d)]
    assert len(fused) == 14 and not any(isinstance(m, torch.nn.ReLU) for m in prepared.modules())
    assert not any(isinstance(m, ConvReLU2d) for m in model.modules())  # the model itself is unchanged
    x = torch.randn(3, 5, 48, 40)
    calls = []
    original = fused[0]._ops[1]
    fused_ops = (fused[0]._ops[0], lambda *a: calls.append(1) or original(*a))
    for m in fused:
        m._ops = fused_ops
    with torch.inference_mode():
        ref = model(x)
        out_cl = prepared(x.contiguous(memory_format=torch.channels_last))
        out_nchw = prepared(x)  # NCHW input: eager fallback
    assert calls, "the decoders' concatenation was not split"
    assert (out_cl - ref).abs().max() <= 1e-5 and (out_nchw - ref).abs().max() <= 1e-5


@needs_fused_ops
def test_fused_conv_relu_falls_back_under_autograd_and_keeps_gradients():
    torch.manual_seed(0)
    seq = fuse_conv_relu(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Identity(), torch.nn.ReLU(),
                                             torch.nn.Conv2d(4, 2, 1), torch.nn.Tanh()))
    assert [type(m).__name__ for m in seq] == ["ConvReLU2d", "Identity", "Identity", "Conv2d", "Tanh"]
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    seq(x).sum().backward()
    assert x.grad is not None and seq[0].conv.weight.grad is not None
    a, b = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    with torch.inference_mode():
        cat = seq[0].conv(torch.cat([a, b], 1)).relu()
        split = seq[0].forward_cat(a.contiguous(memory_format=torch.channels_last),
                                   b.contiguous(memory_format=torch.channels_last))
    assert (split - cat).abs().max() <= 1e-5


def test_amp_is_bf16_only_when_asked_and_refused_on_a_cpu_without_bf16(monkeypatch):
    assert amp_dtype(torch.device("cpu"), False) is None
    assert amp_dtype(torch.device("cuda"), True) is torch.bfloat16
    monkeypatch.setattr(speedups, "cpu_supports_bf16", lambda: False)
    with pytest.raises(ConfigError, match="inference.amp"):
        amp_dtype(torch.device("cpu"), True)
    monkeypatch.setattr(speedups, "cpu_supports_bf16", lambda: True)
    assert amp_dtype(torch.device("cpu"), True) is torch.bfloat16


def tiny_method(cfg: RunConfig):
    spec = METHODS.get(cfg.method, key="method")
    torch.manual_seed(0)
    method = spec.build(spec.make_params(cfg.params), in_channels=3, out_channels=1, patch_size=(16, 16))
    randomise_batchnorm(method.networks[method.generator_name])
    return method.eval()


@pytest.fixture
def case():
    cfg = RunConfig(method="nie-unet", params={"base_filters": 4, "depth": 2})
    cfg.data.patch_size = [16, 16]
    rng = np.random.default_rng(0)
    source = rng.uniform(-1, 1, size=(1, 40, 36, 9)).astype(np.float32)
    mask = np.zeros(source.shape[1:], bool)
    mask[8:30, 10:28, 2:7] = True
    return cfg, tiny_method(cfg), source, mask


def test_predict_settings_fold_and_region_keep_the_values_inside_the_mask(case):
    cfg, method, source, mask = case

    def run(**inference):
        for k, v in inference.items():
            setattr(cfg.inference, k, v)
        return predict_case_arrays(method, source, cfg, torch.device("cpu"), context=3, mask=mask)[0]

    today = run(fold_batchnorm=False, region="full")
    assert np.abs(run(fold_batchnorm=True, region="full") - today).max() <= 1e-4
    grid = run(fold_batchnorm=True, region="foreground-grid")
    assert np.abs(grid[mask] - today[mask]).max() <= 1e-4 and (grid[~mask] == 0).all()
    box = run(region="foreground")
    assert (box[~mask] == 0).all() and np.isfinite(box).all()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in method.networks["G"].modules())  # method unchanged


def test_inference_generator_follows_the_config(case):
    cfg, method, _, _ = case
    cfg.inference.fold_batchnorm = False
    assert inference_generator(method, cfg) is method.networks["G"]
    cfg.inference.fold_batchnorm = True
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference_generator(method, cfg).modules())
