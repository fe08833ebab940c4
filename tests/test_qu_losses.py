"""Qu et al. losses on tiny tensors with hand-computed values.

``||a - b||_2^2`` is the mean of the squared differences (see medsyn.losses.qu); every expected
value below is worked out by hand in the comment next to it.
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch

from medsyn.data.structure import structural_feature_map_torch
from medsyn.losses.qu import (
    QuLossWeights,
    loss_code_consistency,
    loss_cycle,
    loss_cycle_consistency,
    loss_D,
    loss_D_assist,
    loss_D_class,
    loss_D_f,
    loss_FD_f,
    loss_G,
    loss_G_assist,
    loss_G_class,
    loss_G_f,
    loss_mask,
    loss_normal,
    loss_outside_mask,
    loss_sv,
    loss_sv_f,
    loss_sv_l,
    loss_sv_x,
    loss_trans,
    loss_trans_code,
    sq,
)


def t(*values: float) -> torch.Tensor:
    """A (1, 1, 1, n) tensor."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def c(value: float, shape: tuple[int, ...] = (1, 1, 2, 2)) -> torch.Tensor:
    return torch.full(shape, float(value))


def close(a: torch.Tensor, expected: float) -> None:
    assert a.ndim == 0
    assert a.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_squared_norm_is_a_mean():
    close(sq(t(1, 3), t(0, 0)), (1 + 9) / 2)
    close(sq(t(1, 3), 1.0), (0 + 4) / 2)


# --------------------------------------------------------------------------- Sec. 2.3


def test_loss_FD_f_and_D_f():
    # ||FD(code_fg) - 1||^2 = mean(0.25, 0.25) = 0.25; ||FD(code_f)||^2 = mean(1, 1) = 1
    close(loss_FD_f(t(0.5, 1.5), t(1, -1)), 1.25)
    # ||D(f) - 1||^2 = mean(0, 4) = 2; ||D(f_g)||^2 = mean(0.25, 0) = 0.125
    close(loss_D_f(t(1, 3), t(0.5, 0)), 2.125)


def test_loss_G_f_terms_and_weights():
    # ||FD(code_f) - 1||^2 = mean(1, 0) = 0.5; ||D(f_g) - 1||^2 = mean(0.25, 0.25) = 0.25
    close(loss_G_f(t(0, 1), t(0.5, 1.5)), 0.75)
    close(loss_G_f(t(0, 1), t(0.5, 1.5), w_code=0.1, w_map=100), 0.05 + 25.0)


def test_loss_normal():
    # mean(code_mean) = 2 -> 4; std = exp(0.5 * logvar) = (1, 3), mean 2 -> (2 - 1)^2 = 1
    close(loss_normal(t(1, 3), t(0, 2 * math.log(3))), 5.0)
    close(loss_normal(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)), 0.0)  # N(0, 1) is optimal


def test_loss_sv_structure():
    f, f_r, mask = t(1, 0, 1, 0), t(0.5, 0, 1, 1), t(0, 0, 0, 1)
    # ||f - f_r||^2 = (0.25 + 0 + 0 + 1) / 4 = 0.3125; ||f_r * mask||^2 = 1 / 4 = 0.25
    close(loss_sv(f, f_r, mask), 0.5625)
    close(loss_sv(f, f_r, mask, w_rec=50, w_outside=5), 50 * 0.3125 + 5 * 0.25)


def test_loss_mask():
    mask, mask_r = t(1, 0), t(0.5, 0)  # 0.125
    f, f_r = t(1, 1), t(0, 2)  # f * mask_r = (0.5, 0) -> 0.125; f_r * mask_r = (0, 0) -> 0
    f_g, mask_g = t(2, 0), t(1, 1)  # (2, 0) -> 2
    close(loss_mask(mask, mask_r, f, f_r, f_g, mask_g), 0.125 + 0.125 + 0 + 2)
    close(loss_mask(mask, mask_r, f, f_r, f_g, mask_g, w_rec=25, w_outside=5), 25 * 0.125 + 5 * 2.125)


# --------------------------------------------------------------------------- Sec. 2.4


def test_loss_D_and_G_assist_scalar_class_output():
    d_t = {(1, 0): c(0.5), (0, 1): c(0.0)}
    c_t = {(1, 0): c(1.0), (0, 1): c(1.0)}  # targets: i = 0 and i = 1
    # D: ||0.5||^2 + ||0||^2 + ||1 - 0||^2 + ||1 - 1||^2 = 0.25 + 0 + 1 + 0
    close(loss_D_assist(d_t, c_t), 1.25)
    # G: ||0.5 - 1||^2 + ||0 - 1||^2 + 1 + 0 = 0.25 + 1 + 1
    close(loss_G_assist(d_t, c_t), 2.25)
    close(loss_G_assist(d_t, c_t, w_adv=10, w_class=100), 10 * 1.25 + 100 * 1)


def test_class_losses_with_one_hot_class_output():
    # 3-channel class maps, targets one-hot(i): (1,0,0), (0,1,0), (0,0,1)
    e0 = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    e2 = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    # i=0: e0 vs (1,0,0) -> 0; i=1: e0 vs (0,1,0) -> mean(1, 1, 0) = 2/3; i=2: e2 -> 0
    close(loss_G_class([e0, e0, e2]), 2 / 3)
    close(loss_D_class([e0, e0, e2], [e2, e0, e2]), 2 / 3 + (2 / 3 + 2 / 3))


def test_loss_sv_x_cycle_and_consistencies():
    x = [c(1), c(2), c(3)]
    close(loss_sv_x(x, [c(0), c(2), c(5)]), 1 + 0 + 4)
    x_cr = {(1, 0): c(2), (2, 0): c(4), (0, 1): c(2)}
    # ||1 - 2||^2 + ||1 - 4||^2 + ||2 - 2||^2
    close(loss_cycle(x, x_cr), 1 + 9 + 0)
    # only x_cr[1,0] and x_cr[2,0] share i = 0: ordered (j, k) pairs count ||2 - 4||^2 twice
    close(loss_cycle_consistency(x_cr), 2 * 4)
    code = [c(0), c(1)]
    code_t = {(0, 1): c(1), (1, 0): c(1)}  # code of x_0 sent to 1 differs by 1; x_1's matches
    close(loss_code_consistency(code, code_t), 1 + 0)


def test_loss_sv_l_per_class_and_weights():
    target = torch.zeros(1, 3, 2, 2)
    target[:, 0] = 1.0  # all background
    pred = torch.full((1, 3, 2, 2), 0.5)
    # per class: (0.5)^2 = 0.25 each -> sum 0.75; two modalities -> 1.5
    close(loss_sv_l([target, target], [pred, pred]), 1.5)
    close(loss_sv_l([target], [pred], class_weights=(0.02, 0.2, 1.0)), 0.25 * (0.02 + 0.2 + 1.0))
    close(loss_sv_l([target], [target]), 0.0)
    with pytest.raises(ValueError, match="class weights"):
        loss_sv_l([target], [pred], class_weights=(1.0, 1.0))


# --------------------------------------------------------------------------- Sec. 2.6


def test_loss_D_and_G():
    d, d_g = [c(1), c(0)], [c(0.5), c(1)]
    # i=0: 0 + 0.25; i=1: 1 + 1
    close(loss_D(d, d_g), 2.25)
    close(loss_D(d, d_g, w_real=100, w_fake=70), 100 * 1 + 70 * 1.25)
    close(loss_G(d_g), 0.25 + 0)


def test_loss_D_and_G_class():
    c_real, c_gen = [c(0), c(2)], [c(1), c(1)]
    # D: ||0 - 0||^2 + ||1 - 0||^2 + ||2 - 1||^2 + ||1 - 1||^2 = 0 + 1 + 1 + 0
    close(loss_D_class(c_real, c_gen), 2.0)
    close(loss_D_class(c_real, c_gen, w_fake=0.0), 1.0)
    close(loss_G_class(c_gen), 1.0)


def test_loss_sv_f_with_and_without_keep_mask():
    f = t(1, 0, 1, 0)
    f_g = [t(1, 1, 1, 0), t(0, 0, 1, 0)]
    close(loss_sv_f(f, f_g), 0.25 + 0.25)
    keep = t(1, 0, 1, 1)  # ignore the second pixel (e.g. the lesion)
    close(loss_sv_f(f, f_g, keep=keep), 0.0 + 0.25)


def test_loss_sv_f_reaches_the_generated_image_through_the_straight_through_map():
    x = torch.zeros(1, 1, 12, 12)
    x[..., 3:9, 3:9] = 0.9
    f = structural_feature_map_torch(x.roll(1, dims=-1))  # the input map's square sits 1 px right
    x_g = (x + 0.05 * torch.rand_like(x)).requires_grad_(True)
    loss = loss_sv_f(f, [structural_feature_map_torch(x_g, mode="ste")])
    assert loss.item() > 0
    loss.backward()
    assert x_g.grad is not None and x_g.grad.abs().sum() > 0
    x_g.grad = None
    hard = loss_sv_f(f, [structural_feature_map_torch(x_g, mode="hard")])
    assert not hard.requires_grad  # the paper's hard map gives the generator nothing
    close(hard, loss.item())


def test_loss_trans_and_trans_code():
    x_g = [c(0), c(1)]
    x_gt = {(1, 0): c(0.5), (0, 1): c(3)}
    close(loss_trans(x_g, x_gt), 0.25 + 4)
    # first: ||0 - 1||^2 + ||0 - 3||^2 = 10; ordered pairs: 2 * ||1 - 3||^2 = 8
    close(loss_trans_code(c(0), [c(1), c(3)]), 18.0)
    close(loss_trans_code(c(0), [c(1), c(3)], w_input=1.0, w_pair=0.1), 10 + 0.8)


def test_loss_outside_mask():
    mask = t(0, 1)
    close(loss_outside_mask([t(5, 2), t(1, 0)], mask), 4 / 2 + 0)


def test_pairs_with_j_equal_i_and_mismatched_lists_are_rejected():
    with pytest.raises(ValueError, match="j == i"):
        loss_cycle([c(0)], {(0, 0): c(0)})
    with pytest.raises(ValueError, match="equal length"):
        loss_D([c(0)], [c(0), c(1)])


def test_gradients_flow_to_every_argument_that_should_train():
    d_g = c(0.3).requires_grad_(True)
    loss_G([d_g]).backward()
    assert d_g.grad is not None and d_g.grad.abs().sum() > 0


def test_weight_defaults_cover_every_term_and_are_positive():
    w = QuLossWeights()
    values = {f.name: getattr(w, f.name) for f in fields(w) if f.name != "sv_l_class_weights"}
    assert all(isinstance(v, float) and v > 0 for v in values.values())
    assert w.sv_l_class_weights is None
    assert QuLossWeights(trans=1.0).trans == 1.0
