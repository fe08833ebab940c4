"""Invariants of Nie et al.'s training step (``NieDualGAN.train_step``, Sec. 2.3–2.5, Eq. 2–9).

Tiny networks (base 4, 16×16 patches), real tensors, no engine: each test checks one property
the paper states and a faithful implementation must keep.
"""

from __future__ import annotations

import copy

import pytest
import torch

from medsyn.losses.reconstruction import gradient_difference_loss
from medsyn.methods import METHODS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16


def build(name: str = "nie-dual-attention", **params):
    spec = METHODS.get(name)
    p = spec.make_params({"base_filters": 4, "depth": 2, **params})
    torch.manual_seed(0)
    m = spec.build(p, in_channels=5, out_channels=1, patch_size=(SIZE, SIZE))
    # small D1 widths are not configurable from params: the paper's D1 at 16² is ~0.3 M parameters
    return m


class Batches:
    """Counts the mini-batches the step draws; each call gives a new, distinct batch."""

    def __init__(self, seed: int = 0, n: int = 3):
        self.g = torch.Generator().manual_seed(seed)
        self.n, self.calls, self.drawn = n, 0, []

    def __call__(self):
        self.calls += 1
        x = torch.rand(self.n, 5, SIZE, SIZE, generator=self.g) * 2 - 1
        y = (0.6 * x[:, 2:3] + 0.2 * torch.rand(self.n, 1, SIZE, SIZE, generator=self.g)).clamp(-1, 1)
        b = {"source": x, "target": y, "mask": torch.ones_like(y)}
        self.drawn.append(b)
        return b


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_discriminators_and_generator_use_different_mini_batches():
    """Sec. 2.3: D and G are updated on different mini-batches; one step = n_critic + 1 batches."""
    for n_critic in (1, 2):
        m = build(n_critic=n_critic)
        feed = Batches()
        m.train_step(feed, 1)
        assert feed.calls == n_critic + 1
        assert not torch.equal(feed.drawn[0]["source"], feed.drawn[-1]["source"])
    m = build("nie-unet")  # no discriminator: one batch per step
    feed = Batches()
    m.train_step(feed, 1)
    assert feed.calls == 1


def test_generator_gets_no_gradient_and_no_update_in_the_discriminator_steps():
    """The D steps compute G(X) without a graph: G's weights change only in its own step."""
    m = build()
    g_before = snapshot(m.networks["G"])
    seen = {}
    opt_g = m.optimizers["G"]
    real_step = opt_g.step

    def g_step(*a, **k):  # when G's optimiser steps, the D steps are over
        seen["d_done_first"] = not torch.equal(snapshot(m.networks["D1"])["head.weight"], d1_before["head.weight"])
        seen["g_unchanged_until_now"] = all(torch.equal(v, g_before[k_]) for k_, v in snapshot(m.networks["G"]).items()
                                            if "running" not in k_ and "num_batches" not in k_)
        return real_step(*a, **k)

    d1_before = snapshot(m.networks["D1"])
    opt_g.step = g_step
    m.train_step(Batches(), 1)
    assert seen == {"d_done_first": True, "g_unchanged_until_now": True}


def test_no_gradient_reaches_the_generator_in_the_discriminator_steps():
    """Not only G's weights: at every D1/D2 optimiser step G holds no gradient at all (the D losses
    build no graph into G), for WGAN-GP and BCE critics, with and without a source condition."""
    for name, params in (("nie-dual-attention", {"n_critic": 2}), ("nie-sgan", {}),
                         ("nie-dual-attention", {"condition": "source+target"})):
        m = build(name, **params)
        grads_at_d_step = []
        for d in ("D1", "D2"):
            if d not in m.optimizers:
                continue
            real_step = m.optimizers[d].step

            def step(*a, _real=real_step, _d=d, **k):
                grads_at_d_step.append((_d, [p.grad for p in m.networks["G"].parameters() if p.grad is not None]))
                return _real(*a, **k)

            m.optimizers[d].step = step
        m.train_step(Batches(), 1)
        assert grads_at_d_step, name
        assert all(g == [] for _, g in grads_at_d_step), (name, params)


def test_discriminators_are_frozen_during_the_generator_step():
    """In G's step no gradient reaches D1/D2 and their weights do not move; afterwards they train again."""
    m = build()
    at_g_start = {}
    real_zero = m.optimizers["G"].zero_grad

    def capture(*a, **k):  # G's step: after its forward passes through D1/D2, before its backward
        at_g_start.update({n: ([None if p.grad is None else p.grad.clone() for p in m.networks[n].parameters()],
                               snapshot(m.networks[n])) for n in ("D1", "D2")})
        return real_zero(*a, **k)

    m.optimizers["G"].zero_grad = capture
    m.train_step(Batches(), 1)
    for n in ("D1", "D2"):
        grads, weights = at_g_start[n]
        for before, p in zip(grads, m.networks[n].parameters()):
            assert (before is None and p.grad is None) or torch.equal(before, p.grad), n
            assert p.requires_grad, n
        now = snapshot(m.networks[n])
        assert all(torch.equal(now[k], v) for k, v in weights.items()), n


def test_generator_loss_is_attention_plus_weighted_adversarial_terms():
    """Eq. 9: L_G = L_AttG + λ1 L_ADV1 + λ2 L_ADV2 with λ1 = 0.05, λ2 = 0.1 (Sec. 2.5)."""
    m = build()
    out = m.train_step(Batches(), 1)
    c = m.cfg
    assert (c.lambda1, c.lambda2) == (0.05, 0.1)
    expect = float(out["g/att_l1"]) + c.lambda1 * float(out["g/adv1"]) + c.lambda2 * float(out["g/adv2"])
    assert float(out["g/total"]) == pytest.approx(expect, rel=1e-6)
    # and the attention term is Eq. 7–8 with M from D2 on G(X) *before* G's update
    m = build()
    feed = Batches()
    d_copy = {}
    real = m.optimizers["G"].zero_grad

    def keep(*a, **k):
        d_copy["G"] = copy.deepcopy(m.networks["G"])
        d_copy["D2"] = copy.deepcopy(m.networks["D2"])
        return real(*a, **k)

    m.optimizers["G"].zero_grad = keep
    out = m.train_step(feed, 1)
    b = feed.drawn[-1]
    with torch.no_grad():
        fake = d_copy["G"](b["source"])
        conf = torch.sigmoid(d_copy["D2"](fake, return_logits=True))
        att = ((1 - conf) ** m.cfg.beta * (b["target"] - fake).abs()).mean()
    assert float(out["g/att_l1"]) == pytest.approx(float(att), rel=1e-4)


def test_learning_rates_decay_every_two_epochs_as_in_sec_2_5():
    """Sec. 2.5: lr G 5e-3, D1 1e-4, D2 1e-3; ×0.5 (G) and ×0.2 (D1, D2) every 2 epochs."""
    m = build()
    m.train_step(Batches(), 1)  # the optimisers step before their schedulers, as in training
    lr = lambda: {n: o.param_groups[0]["lr"] for n, o in m.optimizers.items()}  # noqa: E731
    assert lr() == pytest.approx({"G": 5e-3, "D1": 1e-4, "D2": 1e-3})
    seen = []
    for epoch in range(1, 5):
        m.epoch_end(epoch)
        seen.append(lr())
    assert seen[0] == pytest.approx({"G": 5e-3, "D1": 1e-4, "D2": 1e-3})  # after epoch 1: unchanged
    assert seen[1] == pytest.approx({"G": 2.5e-3, "D1": 2e-5, "D2": 2e-4})  # after epoch 2
    assert seen[2] == pytest.approx(seen[1])
    assert seen[3] == pytest.approx({"G": 1.25e-3, "D1": 4e-6, "D2": 4e-5})  # after epoch 4


def test_gradient_difference_loss_by_hand():
    """GDL (Mathieu et al. Eq. 5, α = 2) on a 1×3 row: |∂Y| = [1, 1], |∂Ŷ| = [2, 0] → (1 + 1)/2 = 1."""
    y = torch.tensor([0.0, 1.0, 2.0]).reshape(1, 1, 1, 3)
    g = torch.tensor([0.0, 2.0, 2.0]).reshape(1, 1, 1, 3)
    assert float(gradient_difference_loss(g, y)) == pytest.approx(1.0)
    assert float(gradient_difference_loss(y, y)) == 0.0
    # a constant offset has the same gradients: no GDL, while L1 sees it
    assert float(gradient_difference_loss(y + 5.0, y)) == 0.0
    # both in-plane axes count
    img = torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(1))
    flipped = img.transpose(-1, -2).contiguous()
    assert float(gradient_difference_loss(img, img * 0)) == pytest.approx(
        float(gradient_difference_loss(flipped, flipped * 0)), rel=1e-6)
    with pytest.raises(ValueError):
        gradient_difference_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_gradient_difference_loss_in_a_mask_counts_pairs_inside_it_only():
    """With mask=, a difference counts only when both neighbours are inside; the mean is over those."""
    y = torch.tensor([0.0, 1.0, 2.0, 9.0]).reshape(1, 1, 1, 4)
    g = torch.tensor([0.0, 2.0, 2.0, 0.0]).reshape(1, 1, 1, 4)
    inside = torch.tensor([True, True, True, False]).reshape(1, 1, 1, 4)
    # pairs (0,1) and (1,2) count: |1-2|² and |1-0|² → mean 1; the pair (2,3) crosses the border
    assert float(gradient_difference_loss(g, y, mask=inside)) == pytest.approx(1.0)
    assert float(gradient_difference_loss(g, y)) == pytest.approx((1 + 1 + 25) / 3)  # |∂Y| = 7, |∂Ŷ| = 2 across the border
    # what lies outside the mask, in prediction or target, does not change it
    y2, g2 = y.clone(), g.clone()
    y2[..., 3], g2[..., 3] = -4.0, 7.0
    assert float(gradient_difference_loss(g2, y2, mask=inside)) == pytest.approx(1.0)
    # an all-True mask is the plain loss; a mask with no inside pair gives 0, still differentiable
    img = torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(2))
    ref = torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(3))
    full = torch.ones(2, 1, 6, 7, dtype=torch.bool)
    assert float(gradient_difference_loss(img, ref, mask=full)) == pytest.approx(
        float(gradient_difference_loss(img, ref)), rel=1e-6)
    lone = torch.zeros(2, 1, 6, 7, dtype=torch.bool)
    lone[0, 0, 2, 3] = True
    p = img.clone().requires_grad_(True)
    out = gradient_difference_loss(p, ref, mask=lone)
    out.backward()
    assert float(out) == 0.0 and p.grad is not None
    with pytest.raises(ValueError, match="boolean"):
        gradient_difference_loss(img, ref, mask=full.float())


def test_sgan_gdl_covers_the_loss_region():
    """loss_region=foreground restricts sGAN's GDL to the mask, as it does Eq. 1."""
    batch = Batches()()
    batch["mask"][..., :, SIZE // 2:] = 0.0
    changed = {k: v.clone() for k, v in batch.items()}
    changed["target"][..., :, SIZE // 2:] = 1.0  # only outside the mask

    def one(b):
        torch.manual_seed(0)
        m2 = build("nie-sgan", loss_region="foreground")
        return m2.train_step(lambda: {k: v.clone() for k, v in b.items()}, 1)

    a, b = one(batch), one(changed)
    assert float(a["g/gdl"]) == pytest.approx(float(b["g/gdl"]), rel=1e-6)
    assert float(a["g/l1"]) == pytest.approx(float(b["g/l1"]), rel=1e-6)
    plain = build("nie-sgan").train_step(lambda: {k: v.clone() for k, v in batch.items()}, 1)
    assert float(plain["g/gdl"]) != pytest.approx(float(a["g/gdl"]), rel=1e-3)


def test_sgan_baseline_adds_the_gradient_difference_loss():
    """Table 1's sGAN [15] (Nie et al. 2017) = UNet + BCE global D + GDL; the 2018 method has none."""
    m = build("nie-sgan")
    assert m.cfg.lambda_gdl == 1.0 and m.cfg.d1_loss == "bce"
    feed = Batches()
    out = m.train_step(feed, 1)
    assert "g/gdl" in out and float(out["g/gdl"]) > 0
    expect = float(out["g/l1"]) + m.cfg.lambda_gdl * float(out["g/gdl"]) + m.cfg.lambda1 * float(out["g/adv1"])
    assert float(out["g/total"]) == pytest.approx(expect, rel=1e-6)
    assert "g/gdl" not in build().train_step(Batches(), 1)
    with pytest.raises(Exception, match="lambda_gdl"):
        METHODS.get("nie-sgan").make_params({"lambda_gdl": -1.0})
