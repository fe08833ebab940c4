"""Unit tests: the loss functions of Nie et al. 2018 (Eq. 1-8) on tiny hand-computed tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsyn.errors import ConfigError
from medsyn.losses.adversarial import (
    bce_map_loss,
    d2_generator_loss,
    d2_loss,
    gan_bce,
    gradient_penalty,
    interpolation_weights,
    lsgan_loss,
    wgan_critic_loss,
    wgan_generator_loss,
)
from medsyn.losses.attention import DEFAULT_BETA, attention_loss, difficulty_weight
from medsyn.losses.reconstruction import lp_loss
from medsyn.models.discriminators.nie import GlobalDiscriminator, LocalDiscriminator


class LinearCritic(nn.Module):
    """D(x) = <w, x> per sample: its input gradient is w everywhere, so ||grad|| = ||w||."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return (x * self.w).flatten(1).sum(dim=1, keepdim=True)


class Recorder(nn.Module):
    """Wraps a critic and keeps the last input it saw."""

    def __init__(self, critic):
        super().__init__()
        self.critic, self.seen = critic, None

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.critic(x)


# ----------------------------------------------------------------------------- WGAN (Eq. 2-3)


def test_wgan_critic_and_generator_losses_by_hand():
    d_real = torch.tensor([[1.0], [3.0]])  # E = 2
    d_fake = torch.tensor([[0.5], [-1.5]])  # E = -0.5
    assert wgan_critic_loss(d_real, d_fake).item() == pytest.approx(-0.5 - 2.0)  # Eq. 2 w/o GP
    assert wgan_generator_loss(d_fake).item() == pytest.approx(0.5)  # Eq. 3


def test_gradient_penalty_zero_for_unit_norm_linear_critic():
    w = torch.randn(1, 4, 4)
    critic = LinearCritic(w / w.norm())
    real, fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("norm_w, lam", [(3.0, 10.0), (0.5, 10.0), (2.0, 1.5)])
def test_gradient_penalty_equals_lambda_times_norm_minus_one_squared(norm_w, lam):
    w = torch.randn(2, 3, 5)
    critic = LinearCritic(w * norm_w / w.norm())
    real, fake = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)
    gp = gradient_penalty(critic, real, fake, lambda_gp=lam)
    assert gp.item() == pytest.approx(lam * (norm_w - 1) ** 2, rel=1e-5)


def test_gradient_penalty_norm_is_per_sample_over_c_h_w():
    """D(x) = 0.5 ||x||^2 has gradient x-hat: GP = lambda * mean_i (||x-hat_i|| - 1)^2, by hand."""

    def critic(x):
        return 0.5 * x.square().flatten(1).sum(1)

    real = torch.tensor([[[[1.0, 2.0]], [[2.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 3.0]]]])  # (2, 2, 1, 2)
    fake = torch.zeros_like(real)
    alpha = torch.tensor([0.5, 1.0]).view(2, 1, 1, 1)
    # x-hat_0 = 0.5 * (1, 2, 2, 0): norm 1.5; x-hat_1 = (0, 0, 0, 3): norm 3
    expected = 10.0 * ((1.5 - 1) ** 2 + (3 - 1) ** 2) / 2
    assert gradient_penalty(critic, real, fake, alpha=alpha).item() == pytest.approx(expected)
    # the peer code's per-pixel norm (over channels only) gives a different number
    xhat = alpha * real
    per_pixel = 10.0 * ((xhat.norm(dim=1) - 1) ** 2).mean()
    assert per_pixel.item() != pytest.approx(expected)


def test_interpolation_alpha_is_per_sample_and_uniform():
    critic = Recorder(LinearCritic(torch.ones(1, 2, 2)))
    b = 8
    rng = torch.Generator().manual_seed(0)
    gradient_penalty(critic, torch.ones(b, 1, 2, 2), torch.zeros(b, 1, 2, 2), generator=rng)
    xhat = critic.seen  # = alpha, broadcast over (C, H, W)
    per_sample = xhat.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one alpha per sample
    assert per_sample[:, 0].unique().numel() == b  # different samples, different alpha

    a = interpolation_weights(200_000, generator=torch.Generator().manual_seed(1))
    assert a.shape == (200_000, 1, 1, 1)
    assert a.min() >= 0 and a.max() < 1  # U[0, 1), not a normal
    assert a.mean().item() == pytest.approx(0.5, abs=0.005)
    assert a.var().item() == pytest.approx(1 / 12, abs=0.002)


def test_gradient_penalty_reproducible_with_generator():
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    real, fake = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    gp = [gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert gp[0].item() == gp[1].item() != gp[2].item()


def test_gradient_penalty_trains_critic_not_generator():
    torch.manual_seed(0)
    gen = nn.Conv2d(2, 1, 3, padding=1)
    critic = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 1))
    source, real = torch.randn(3, 2, 8, 8), torch.randn(3, 1, 8, 8)
    fake = gen(source)
    for passed in (fake.detach(), fake):  # the caller detaches; the GP also detaches itself
        critic.zero_grad(set_to_none=True)
        gradient_penalty(critic, real, passed).backward()
        assert gen.weight.grad is None and gen.bias.grad is None
        # every weight gets a gradient (the last bias does not enter the input gradient)
        weights = [critic[0].weight, critic[0].bias, critic[3].weight]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


def test_gradient_penalty_condition_is_concatenated_unchanged_and_not_penalised():
    w, v = torch.randn(1, 4, 4), torch.randn(2, 4, 4) * 5

    class CondCritic(nn.Module):
        def forward(self, x):
            return (x[:, :1] * w).flatten(1).sum(1) + (x[:, 1:] * v).flatten(1).sum(1)

    critic = Recorder(CondCritic())
    real, fake, cond = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 2, 4, 4)
    gp = gradient_penalty(critic, real, fake, condition=cond)
    assert critic.seen.shape == (3, 3, 4, 4)
    assert torch.equal(critic.seen[:, 1:], cond)
    assert gp.item() == pytest.approx(10.0 * (w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_condition_first_order():
    w = torch.randn(1, 4, 4)

    class SourceFirstCritic(nn.Module):  # input = cat([source (2 ch), target (1 ch)])
        def forward(self, x):
            return (x[:, 2:] * w).flatten(1).sum(1) + 3 * x[:, :2].flatten(1).sum(1)

    critic = Recorder(SourceFirstCritic())
    real, fake, cond = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.randn(3, 2, 4, 4)
    gp = gradient_penalty(critic, real, fake, condition=cond, condition_first=True)
    assert torch.equal(critic.seen[:, :2], cond)
    assert gp.item() == pytest.approx(10.0 * (w.norm().item() - 1) ** 2, rel=1e-5)


def test_gradient_penalty_through_paper_d1_with_sn_and_bn():
    d1 = GlobalDiscriminator(input_size=16, channels=(4, 8, 8), conv_channels=8, fc_features=(16, 8))
    gp = gradient_penalty(d1, torch.randn(4, 1, 16, 16), torch.randn(4, 1, 16, 16))
    assert torch.isfinite(gp) and gp.item() >= 0
    gp.backward()
    assert d1.features[0].parametrizations.weight.original.grad is not None


def test_gradient_penalty_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(LinearCritic(torch.ones(1, 2, 2)), torch.zeros(2, 1, 2, 2), torch.zeros(3, 1, 2, 2))


# ----------------------------------------------------------------------------- dense BCE (Eq. 4-6)


def test_bce_map_loss_by_hand():
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4
    logits = torch.tensor([[[[0.0, math.log(3.0)]]]])  # (1, 1, 1, 2)
    real = [math.log(2.0), -math.log(0.75)]  # -log Q-hat
    fake = [math.log(2.0), -math.log(0.25)]  # -log(1 - Q-hat)
    assert bce_map_loss(logits, True, "sum").item() == pytest.approx(sum(real))  # Eq. 5: sum over H, W
    assert bce_map_loss(logits, False, "sum").item() == pytest.approx(sum(fake))
    assert bce_map_loss(logits, True, "mean").item() == pytest.approx(sum(real) / 2)
    assert bce_map_loss(logits, True).item() == bce_map_loss(logits, True, "mean").item()  # default mean


def test_bce_map_sum_is_hw_times_mean_and_mean_over_batch():
    logits = torch.randn(3, 1, 6, 5)
    for real in (True, False):
        s, m = bce_map_loss(logits, real, "sum"), bce_map_loss(logits, real, "mean")
        assert s.item() == pytest.approx(6 * 5 * m.item(), rel=1e-5)
    # "sum" is summed over pixels and averaged over the batch
    per_sample = [bce_map_loss(logits[i : i + 1], True, "sum").item() for i in range(3)]
    assert bce_map_loss(logits, True, "sum").item() == pytest.approx(sum(per_sample) / 3, rel=1e-5)


def test_bce_map_loss_is_stable_for_saturated_logits():
    logits = torch.full((1, 1, 2, 2), 200.0)
    assert bce_map_loss(logits, False).item() == pytest.approx(200.0)
    assert bce_map_loss(logits, True).item() == pytest.approx(0.0, abs=1e-6)


def test_d2_losses_eq4_and_eq6():
    lr, lf = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    for red in ("mean", "sum"):
        expected = bce_map_loss(lr, True, red) + bce_map_loss(lf, False, red)
        assert d2_loss(lr, lf, red).item() == pytest.approx(expected.item())
        assert d2_generator_loss(lf, red).item() == pytest.approx(bce_map_loss(lf, True, red).item())
    # at logits 0 (M = 0.5 everywhere): Eq. 4 per pixel = 2 ln 2
    z = torch.zeros(1, 1, 4, 4)
    assert d2_loss(z, z).item() == pytest.approx(2 * math.log(2))


def test_bad_reduction_is_config_error():
    with pytest.raises(ConfigError, match="reduction"):
        bce_map_loss(torch.zeros(1, 1, 2, 2), True, "none")


def test_gan_bce_logits_and_probabilities_agree():
    logits = torch.randn(2, 1, 3, 3)
    for real in (True, False):
        a = gan_bce(logits, real)
        b = gan_bce(torch.sigmoid(logits), real, from_logits=False)
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
        assert a.item() == pytest.approx(bce_map_loss(logits, real).item())
    assert gan_bce(torch.tensor([[0.0]]), True).item() == pytest.approx(math.log(2))


def test_lsgan_loss_by_hand():
    pred = torch.tensor([0.0, 1.0, 3.0])
    assert lsgan_loss(pred, True).item() == pytest.approx((1 + 0 + 4) / 3)
    assert lsgan_loss(pred, False).item() == pytest.approx((0 + 1 + 9) / 3)


# ----------------------------------------------------------------------------- reconstruction (Eq. 1)


def test_lp_loss_p1_p2_by_hand():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 2.0]]]])  # |d| = 1, 0, 2, 3
    assert lp_loss(pred, target, p=1).item() == pytest.approx(6 / 4)
    assert lp_loss(pred, target, p=2).item() == pytest.approx(14 / 4)
    assert lp_loss(pred, target, p=2).item() == pytest.approx(F.mse_loss(pred, target).item())
    assert lp_loss(pred, target, p=1).item() == pytest.approx(F.l1_loss(pred, target).item())


def test_lp_loss_weight_and_mask():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 2.0]]]])  # |d| = 1, 0, 2, 3
    weight = torch.tensor([[[[1.0, 5.0], [0.5, 0.0]]]])
    assert lp_loss(pred, target, weight=weight).item() == pytest.approx((1 + 0 + 1 + 0) / 4)
    mask = torch.tensor([[[[True, False], [True, True]]]])
    assert lp_loss(pred, target, mask=mask).item() == pytest.approx((1 + 2 + 3) / 3)
    assert lp_loss(pred, target, weight=weight, mask=mask).item() == pytest.approx((1 + 1 + 0) / 3)
    empty = torch.zeros_like(mask)
    out = lp_loss(pred.requires_grad_(), target, mask=empty)
    assert out.item() == 0 and out.requires_grad


def test_lp_loss_rejects_bad_input():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ConfigError, match="p"):
        lp_loss(x, x, p=3)
    with pytest.raises(ValueError, match="same shape"):
        lp_loss(x, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="boolean"):
        lp_loss(x, x, mask=torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="broadcast"):
        lp_loss(x, x, weight=torch.ones(2, 1, 2, 2))


# ----------------------------------------------------------------------------- attention (Eq. 7-8)


def test_difficulty_weight_by_hand_and_detached():
    m = torch.tensor([0.0, 0.5, 0.9, 1.0], requires_grad=True)
    f2 = difficulty_weight(m, beta=2)
    assert torch.allclose(f2, torch.tensor([1.0, 0.25, 0.01, 0.0]))
    assert torch.allclose(difficulty_weight(m, beta=1), torch.tensor([1.0, 0.5, 0.1, 0.0]))
    assert torch.equal(difficulty_weight(m, beta=0), torch.ones(4))
    assert not f2.requires_grad
    assert DEFAULT_BETA == 2.0
    assert torch.allclose(difficulty_weight(m), f2)
    with pytest.raises(ConfigError, match="beta"):
        difficulty_weight(m, beta=-1)


@pytest.mark.parametrize("p", [1, 2])
def test_attention_loss_with_zero_confidence_equals_plain_lp(p):
    pred, target = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    m0 = torch.zeros(2, 1, 4, 4)
    assert attention_loss(pred, target, m0, beta=2, p=p).item() == pytest.approx(lp_loss(pred, target, p=p).item())
    # beta = 0 switches the attention off for any M
    m = torch.rand(2, 1, 4, 4)
    assert attention_loss(pred, target, m, beta=0, p=p).item() == pytest.approx(lp_loss(pred, target, p=p).item())


def test_attention_loss_by_hand_p1_and_p2():
    pred = torch.tensor([[[[0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, -2.0]]]])
    m = torch.tensor([[[[0.5, 0.75]]]])  # F (beta 2) = 0.25, 0.0625
    assert attention_loss(pred, target, m, beta=2, p=1).item() == pytest.approx((0.25 * 1 + 0.0625 * 2) / 2)
    assert attention_loss(pred, target, m, beta=2, p=2).item() == pytest.approx((0.25 * 1 + 0.0625 * 4) / 2)
    assert attention_loss(pred, target, m, beta=1, p=1).item() == pytest.approx((0.5 * 1 + 0.25 * 2) / 2)


def test_attention_loss_gives_no_gradient_to_d2():
    torch.manual_seed(0)
    gen = nn.Conv2d(1, 1, 3, padding=1)
    d2 = LocalDiscriminator(in_channels=1, base=4)
    source, target = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    fake = gen(source)
    m = d2(fake)  # confidence of the synthetic image, as in the generator step
    attention_loss(fake, target, m).backward()
    assert all(p.grad is None for p in d2.parameters())
    assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0
    # the gradient w.r.t. G(X) is F * sign(G(X) - Y) / N, with F treated as a constant
    fake2 = fake.detach().requires_grad_()
    attention_loss(fake2, target, m, beta=2).backward()
    f = (1 - m.detach()) ** 2
    assert torch.allclose(fake2.grad, f * torch.sign(fake2 - target).detach() / fake2.numel())


def test_attention_loss_mask_counts_only_masked_pixels():
    pred = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 2.0]]]])  # |d| = 1, 0, 2, 3
    conf = torch.tensor([[[[0.5, 0.0], [0.0, 0.5]]]])  # F = 0.25, 1, 1, 0.25 (β = 2)
    mask = torch.tensor([[[[True, True], [False, True]]]])
    assert attention_loss(pred, target, conf, beta=2.0, mask=mask).item() == pytest.approx((0.25 + 0 + 0.75) / 3)


@pytest.mark.parametrize("method", ["nie-unet", "nie-dual-attention"])
def test_foreground_loss_region_ignores_background_pixels(method):
    """params.loss_region=foreground: the generator's reconstruction term sees only mask pixels —
    changing the target outside the mask changes neither the loss nor G's gradient."""
    from medsyn.methods import METHODS

    spec = METHODS.get(method)

    def run(target_outside: float, region: str) -> tuple[float, torch.Tensor]:
        torch.manual_seed(0)
        params = spec.make_params({"base_filters": 4, "depth": 2, "loss_region": region, "lr_g": 1e-12,
                                   "lr_d1": 1e-12, "lr_d2": 1e-12})  # D ~frozen: only the target differs
        m = spec.build(params, in_channels=3, out_channels=1, patch_size=(16, 16))
        g = torch.Generator().manual_seed(1)
        x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
        mask = torch.zeros(2, 1, 16, 16)
        mask[:, :, 4:12, 4:12] = 1
        y = torch.where(mask > 0, torch.rand(2, 1, 16, 16, generator=g), torch.full_like(mask, target_outside))
        out = m.train_step(lambda: {"source": x, "target": y, "mask": mask}, 1)
        rec = next(v for k, v in out.items() if k.startswith(("g/l1", "g/att_l1")))
        return float(rec), m.networks["G"].head.weight.grad.clone()

    a, ga = run(-1.0, "foreground")
    b, gb = run(0.7, "foreground")
    assert a == pytest.approx(b, abs=1e-6) and torch.allclose(ga, gb, atol=1e-6)
    c, _ = run(0.7, "patch")  # the paper's Eq. 1 over the whole patch does see the background
    assert abs(c - a) > 1e-3


def test_warmup_steps_train_the_generator_alone_then_the_paper_step():
    """params.warmup_steps=N: steps 1…N are Eq. 1 alone (D1, D2 untouched), from N + 1 on Eq. 9."""
    from medsyn.methods import METHODS

    spec = METHODS.get("nie-dual-attention")
    torch.manual_seed(0)
    m = spec.build(spec.make_params({"base_filters": 4, "depth": 2, "warmup_steps": 2}), in_channels=3,
                   out_channels=1, patch_size=(16, 16))
    batch = {"source": torch.rand(2, 3, 16, 16) * 2 - 1, "target": torch.rand(2, 1, 16, 16) * 2 - 1,
             "mask": torch.ones(2, 1, 16, 16)}
    d_before = {n: [p.detach().clone() for p in m.networks[n].parameters()] for n in ("D1", "D2")}
    g_before = [p.detach().clone() for p in m.networks["G"].parameters()]
    for step in (1, 2):
        out = m.train_step(lambda: batch, step)
        assert set(out) == {"g/l1", "g/total", "g/mae_batch"}
    for n, ps in d_before.items():
        assert all(torch.equal(a, b) for a, b in zip(ps, m.networks[n].parameters())), n
    assert not all(torch.equal(a, b) for a, b in zip(g_before, m.networks["G"].parameters()))
    out = m.train_step(lambda: batch, 3)
    assert {"d1/wasserstein", "d1/gp", "d2/bce", "g/att_l1", "g/adv1", "g/adv2"} <= set(out)
    assert not all(torch.equal(a, b) for a, b in zip(d_before["D1"], m.networks["D1"].parameters()))
