"""MedGAN losses on tiny hand-computed tensors (Armanious et al. Eq. 6-12) and PAN's margin term."""

from __future__ import annotations

import pytest
import torch

from medsyn.errors import ConfigError
from medsyn.losses.perceptual import (
    LAMBDA_CONTENT,
    LAMBDA_PERCEPTUAL,
    LAMBDA_STYLE,
    MedGANLossWeights,
    content_loss,
    gram_matrix,
    medgan_generator_loss,
    pan_discriminator_loss,
    perceptual_loss,
    perceptual_terms,
    style_loss,
)
from medsyn.models.discriminators.patchgan import PatchGAN
from medsyn.models.vgg import VGG19


def t(values, shape):
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


# (1, 2, 1, 2): channel 0 = [1, 2], channel 1 = [3, 4]  →  h = 1, w = 2, d = 2
F = t([1, 2, 3, 4], (1, 2, 1, 2))


def test_gram_matrix_hand_computed():
    # Eq. 9: sum over h, w of V_m V_n, divided by h·w·d = 4
    expected = t([[5, 11], [11, 25]], (1, 2, 2)) / 4
    assert torch.allclose(gram_matrix(F), expected)
    assert torch.allclose(gram_matrix(F), t([[1.25, 2.75], [2.75, 6.25]], (1, 2, 2)))
    with pytest.raises(ValueError):
        gram_matrix(F[0])


def test_gram_matrix_matches_explicit_sum():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 2, 4, dtype=torch.float64)
    b, d, h, w = f.shape
    g = torch.zeros(b, d, d, dtype=torch.float64)
    for k in range(b):
        for m in range(d):
            for n in range(d):
                g[k, m, n] = sum(f[k, m, i, j] * f[k, n, i, j] for i in range(h) for j in range(w)) / (h * w * d)
    assert torch.allclose(gram_matrix(f), g)


def test_style_loss_hand_computed():
    zero = torch.zeros_like(F)
    # ||Gr||_F^2 = 1.25² + 2·2.75² + 6.25² = 55.75; Eq. 10 divides by 4 d² = 16
    assert torch.isclose(style_loss([F], [zero], weights=[1.0]), torch.tensor(55.75 / 16, dtype=torch.float64))
    assert torch.isclose(style_loss([F], [zero], weights=[2.0]), torch.tensor(2 * 3.484375, dtype=torch.float64))
    # the Gram matrix ignores where things are: a spatial permutation has zero style loss ...
    permuted = F.flip(-1)
    assert style_loss([F], [permuted], weights=[1.0]) == 0
    # ... but not zero content loss: (F - P)² = 1 everywhere → 1 (Eq. 11)
    assert torch.isclose(content_loss([F], [permuted], weights=[1.0]), torch.tensor(1.0, dtype=torch.float64))


def test_style_loss_uses_only_weighted_blocks():
    zero = torch.zeros_like(F)
    big = F * 1000
    fake = [F, big, big, big, F]
    real = [zero, zero, zero, zero, zero]
    # default λ_sj: first and last block only (MedGAN Sec. 2.5)
    assert torch.isclose(style_loss(fake, real), torch.tensor(2 * 3.484375, dtype=torch.float64))
    # default λ_cj: all but the deepest block
    expected_content = 7.5 + 3 * 7.5e6
    assert torch.isclose(content_loss(fake, real), torch.tensor(expected_content, dtype=torch.float64))
    # batch: mean over samples
    two = torch.cat([F, torch.zeros_like(F)])
    assert torch.isclose(style_loss([two], [torch.zeros_like(two)], weights=[1]),
                         torch.tensor(3.484375 / 2, dtype=torch.float64))


def test_content_loss_hand_computed():
    zero = torch.zeros_like(F)
    # Eq. 11: ||V||_F² / (h w d) = (1 + 4 + 9 + 16) / 4
    assert torch.isclose(content_loss([F], [zero], weights=[1.0]), torch.tensor(7.5, dtype=torch.float64))
    d = 3 * torch.ones(1, 4, 2, 2, dtype=torch.float64)
    assert torch.isclose(content_loss([F, d], [zero, torch.zeros_like(d)], weights=[1.0, 0.5]),
                         torch.tensor(7.5 + 0.5 * 9, dtype=torch.float64))


def perceptual_example():
    # source y = [0, 0], target x = [1, 1], translated G(y) = [1, 3]; one hidden layer
    y, x, g = t([0, 0], (1, 1, 1, 2)), t([1, 1], (1, 1, 1, 2)), t([1, 3], (1, 1, 1, 2))
    fake = [torch.cat([y, g], 1), t([1, 5], (1, 2, 1, 1))]
    real = [torch.cat([y, x], 1), t([2, 2], (1, 2, 1, 1))]
    return fake, real


def test_perceptual_loss_hand_computed_including_layer0():
    fake, real = perceptual_example()
    p0, p1 = perceptual_terms(fake, real)
    # layer 0: |[0, 0, 0, 2]| averaged over h·w·d = 1·2·2 → 0.5 (= half the pixel MAE |G(y) - x| = 1)
    assert torch.allclose(p0, t([0.5], (1,)))
    # hidden layer: |[1 - 2, 5 - 2]| / 2 = 2
    assert torch.allclose(p1, t([2.0], (1,)))
    assert torch.isclose(perceptual_loss(fake, real), torch.tensor(2.5, dtype=torch.float64))  # λ_pi equal
    assert torch.isclose(perceptual_loss(fake, real, weights=[1.0, 0.5]), torch.tensor(1.5, dtype=torch.float64))
    assert torch.isclose(perceptual_loss(fake, real, weights=[1.0, 0.0]), torch.tensor(0.5, dtype=torch.float64))
    # batch mean: a second sample with no difference halves it
    fake2 = [torch.cat([f, r]) for f, r in zip(fake, real)]
    real2 = [torch.cat([r, r]) for r in real]
    assert torch.isclose(perceptual_loss(fake2, real2), torch.tensor(1.25, dtype=torch.float64))


def test_loss_argument_checks():
    fake, real = perceptual_example()
    with pytest.raises(ConfigError, match="weights"):
        perceptual_loss(fake, real, weights=[1.0])
    with pytest.raises(ConfigError, match="≥ 0"):
        perceptual_loss(fake, real, weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="layer 1"):
        perceptual_loss(fake, [real[0], real[1][:, :1]])
    with pytest.raises(ValueError, match="fake feature maps"):
        style_loss([F], [F, F], weights=[1])
    with pytest.raises(ConfigError, match="margin"):
        pan_discriminator_loss(fake, real, margin=0.0)


def test_pan_margin_loss_hand_computed():
    # two samples; hidden-layer distances 0.3 and 3.0; raw-input distances 0.2 and 0
    real = [torch.zeros(2, 1, 1, 2, dtype=torch.float64), torch.zeros(2, 1, 2, 2, dtype=torch.float64)]
    fake = [t([0.2, 0.2, 0, 0], (2, 1, 1, 2)),
            torch.cat([torch.full((1, 1, 2, 2), 0.3, dtype=torch.float64),
                       torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64)])]
    fake[1].requires_grad_(True)
    # PAN: max(0, m - L_P) with L_P on hidden layers only, per sample then averaged
    loss = pan_discriminator_loss(fake, real, margin=1.0)
    assert torch.isclose(loss, torch.tensor((0.7 + 0.0) / 2, dtype=torch.float64))
    # minimising it pushes D to *increase* the distance below the margin, and ignores samples above it
    loss.backward()
    g = fake[1].grad
    assert bool((g[0] < 0).all()) and bool((g[1] == 0).all())
    with_input = pan_discriminator_loss([f.detach() for f in fake], real, margin=1.0, include_input=True)
    assert torch.isclose(with_input, torch.tensor((1 - 0.5) / 2, dtype=torch.float64))
    weighted = pan_discriminator_loss([f.detach() for f in fake], real, margin=1.0, weights=[2.0])
    assert torch.isclose(weighted, torch.tensor((1 - 0.6) / 2, dtype=torch.float64))


def test_medgan_generator_loss_composition():
    w = MedGANLossWeights()
    assert (w.perceptual, w.style, w.content) == (20.0, 1e-4, 1e-4)
    assert (LAMBDA_PERCEPTUAL, LAMBDA_STYLE, LAMBDA_CONTENT) == (20.0, 1e-4, 1e-4)
    adv, per, sty, con = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (0.7, 0.1, 100.0, 50.0))
    total, parts = medgan_generator_loss(adv, per, sty, con)
    # Eq. 12: 0.7 + 20·0.1 + 1e-4·100 + 1e-4·50
    assert torch.isclose(total, torch.tensor(2.715, dtype=torch.float64))
    assert set(parts) == {"g/cgan", "g/perceptual", "g/style", "g/content", "g/total"}
    assert float(parts["g/style"]) == 100.0 and not parts["g/total"].requires_grad
    total.backward()
    assert float(per.grad) == 20.0 and float(sty.grad) == pytest.approx(1e-4)
    total2, _ = medgan_generator_loss(adv, per, sty, con, MedGANLossWeights(perceptual=1, style=0, content=0))
    assert torch.isclose(total2, torch.tensor(0.8, dtype=torch.float64))


def test_losses_with_real_networks():
    torch.manual_seed(0)
    d = PatchGAN(1, 1, n_layers=1, base_channels=8).eval()
    vgg = VGG19()
    y = torch.rand(2, 1, 32, 32) * 2 - 1
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    g = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_(True)
    _, ff = d(g, y, return_features=True)
    _, fr = d(x, y, return_features=True)
    # layer 0 of the discriminator = concat(y, ·): over the whole input, half the pixel MAE for
    # 1-channel images — which is why MedGAN.train_step passes only its image channels (D_0 of Eq. 6)
    p0 = perceptual_terms(ff, fr)[0]
    assert torch.allclose(p0, 0.5 * (g - x).abs().flatten(1).mean(1))
    assert torch.allclose(perceptual_terms([ff[0][:, 1:]], [fr[0][:, 1:]])[0], (g - x).abs().flatten(1).mean(1))
    _, fx = d(x, y, return_features=True)
    assert perceptual_loss(fx, fr) == 0
    per = perceptual_loss(ff, [f.detach() for f in fr])
    vf, vr = vgg(g), [f.detach() for f in vgg(x)]
    sty, con = style_loss(vf, vr), content_loss(vf, vr)
    assert sty > 0 and con > 0 and style_loss(vr, vr) == 0
    total, _ = medgan_generator_loss(torch.tensor(0.0), per, sty, con)
    total.backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
