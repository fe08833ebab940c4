"""Eval-time speed-ups (BatchNorm folding, bf16 gate) and the predict path's inference settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsyn.config import RunConfig
from medsyn.errors import ConfigError
from medsyn.inference import speedups
from medsyn.inference.predict import inference_generator, predict_case_arrays
from medsyn.inference.speedups import amp_dtype, fold_batchnorm
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
