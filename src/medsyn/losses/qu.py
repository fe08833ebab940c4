"""The losses of Qu et al., "Synthesis of Registered Multimodal MRI with Lesion Label" (Sec. 2.3–2.6).

Every function is pure, named after the paper's symbol (``loss_{D,assist}`` -> ``loss_D_assist``)
and quotes the equation it implements. Which tensors are detached (e.g. generated images in a
discriminator loss) is the training step's business.

Conventions
-----------
* ``||a - b||_2^2`` is implemented as the **mean** of the squared differences over all elements
  (batch included), as in the authors' code (``tf.reduce_mean(tf.square(x - y))``), so the
  weights do not depend on the image or patch size. Each term of a sum is its own mean.
* Adversarial terms are least squares (LSGAN): real -> 1, fake -> 0, as the equations are
  written (``||D_f(f) - 1||^2 + ||D_f(f_g)||^2``). Discriminator outputs are raw (no sigmoid).
* Per-modality quantities are passed as a sequence indexed by the modality ``i`` (0..n-1);
  the modality-class target of entry ``i`` is ``i``. Pairwise quantities are passed as a
  mapping keyed by the paper's subscripts, e.g. ``x_cr[(j, i)]`` = ``x_{cr,j,i}``.
* Class outputs ``c``: with one channel the target is the index ``i`` itself (``||c - i||^2``
  as written, and as in the authors' code); with ``n`` channels (n >= 2) the target is the
  one-hot vector of ``i``.
* Sums over ``j != i`` (and ``k != i, j``) run over ordered index pairs, as written; each
  unordered pair therefore appears twice in ``loss_{cycle,consistency}`` and in the second
  term of ``loss_{trans,code}``.

The weights ``omega_{i,j}`` are named but not valued in the paper (Sec. 2.3); the defaults of
:class:`QuLossWeights` are those of the authors' public code (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import torch

from medsyn.config import Bound

Pairs = Mapping[tuple[int, int], torch.Tensor]


def sq(a: torch.Tensor, b: torch.Tensor | float = 0.0) -> torch.Tensor:
    """``||a - b||_2^2`` as a mean over all elements (scalar). ``b`` may be a number."""
    return torch.mean((a - b) ** 2)


def _class_target(c: torch.Tensor, i: int) -> torch.Tensor | float:
    if c.shape[1] == 1:
        return float(i)
    if not 0 <= i < c.shape[1]:
        raise ValueError(f"class output has {c.shape[1]} channels; no one-hot target for modality {i}")
    target = torch.zeros(c.shape[1], dtype=c.dtype, device=c.device)
    target[i] = 1.0
    return target.view(1, -1, *([1] * (c.ndim - 2)))


def _check_pairs(pairs: Pairs, name: str) -> None:
    if not pairs:
        raise ValueError(f"{name}: no (j, i) pairs given")
    for j, i in pairs:
        if j == i:
            raise ValueError(f"{name}: key ({j}, {i}) has j == i; the paper's sums run over j != i")


def _check_same_length(a: Sequence, b: Sequence, name: str) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"{name}: expected two non-empty sequences of equal length, got {len(a)} and {len(b)}")


# --------------------------------------------------------------------------- Sec. 2.3: structure maps


def loss_FD_f(fd_code_f_g: torch.Tensor, fd_code_f: torch.Tensor) -> torch.Tensor:
    """``loss_{FD_f} = ||FD_f(code_{f,g}) - 1||_2^2 + ||FD_f(code_f)||_2^2`` (Sec. 2.3).

    The code discriminator takes N(0, 1) samples ``code_{f,g}`` as real and encoded structure
    maps ``code_f`` as fake.
    """
    return sq(fd_code_f_g, 1.0) + sq(fd_code_f)


def loss_D_f(d_f: torch.Tensor, d_f_g: torch.Tensor) -> torch.Tensor:
    """``loss_{D_f} = ||D_f(f) - 1||_2^2 + ||D_f(f_g)||_2^2`` (Sec. 2.3): real maps f, maps f_g decoded from noise."""
    return sq(d_f, 1.0) + sq(d_f_g)


def loss_G_f(
    fd_code_f: torch.Tensor, d_f_g: torch.Tensor, *, w_code: float = 1.0, w_map: float = 1.0
) -> torch.Tensor:
    """``loss_{G_f} = ||FD_f(code_f) - 1||_2^2 + ||D_f(f_g) - 1||_2^2`` (Sec. 2.3).

    The first term pushes the encoder ``EC_f`` towards N(0, 1) codes, the second the decoder
    ``DC_f`` towards realistic maps; ``w_code`` / ``w_map`` weight them separately.
    """
    return w_code * sq(fd_code_f, 1.0) + w_map * sq(d_f_g, 1.0)


def loss_normal(
    code_f_mean: torch.Tensor, code_f_logvar: torch.Tensor, *, w_mean: float = 1.0, w_std: float = 1.0
) -> torch.Tensor:
    """``loss_normal = ||mean(code_{f,mean})||_2^2 + ||mean(exp(0.5 * code_{f,logvar})) - 1||_2^2`` (Sec. 2.3).

    The mean of the mean matrix is pulled to 0 and the mean of the standard-deviation matrix
    ``exp(0.5 * logvar)`` to 1 ("L2 regularisation ... mean 0, standard deviation 1"). The
    printed subscript ``code_{f,lower}`` is read as the log-variance matrix, the only quantity
    for which ``exp(0.5 * .)`` is a standard deviation. ``mean`` runs over all elements.
    """
    return w_mean * torch.mean(code_f_mean) ** 2 + w_std * (torch.mean(torch.exp(0.5 * code_f_logvar)) - 1.0) ** 2


def loss_sv(
    f: torch.Tensor, f_r: torch.Tensor, mask: torch.Tensor, *, w_rec: float = 1.0, w_outside: float = 1.0
) -> torch.Tensor:
    """``loss_sv = ||f - f_r||_2^2 + ||f_r * mask||_2^2`` (Sec. 2.3, structure maps).

    Reconstruction of the structure map, plus no structure outside the brain (``mask`` is
    Algorithm 2's mask, 1 outside). Not to be confused with the modality reconstruction loss
    that the paper also calls ``loss_sv`` (Sec. 2.4): :func:`loss_sv_x`.
    """
    return w_rec * sq(f, f_r) + w_outside * sq(f_r * mask)


def loss_mask(
    mask: torch.Tensor,
    mask_r: torch.Tensor,
    f: torch.Tensor,
    f_r: torch.Tensor,
    f_g: torch.Tensor,
    mask_g: torch.Tensor,
    *,
    w_rec: float = 1.0,
    w_outside: float = 1.0,
) -> torch.Tensor:
    """``loss_mask = ||mask - mask_r||_2^2 + ||f * mask_r||_2^2 + ||f_r * mask_r||_2^2 + ||f_g * mask_g||_2^2`` (Sec. 2.3).

    The MASK generator reproduces Algorithm 2's mask of the real slice (``mask_r = MASK(f)``)
    and its mask excludes every structure pixel: of the real map ``f``, of the reconstruction
    ``f_r`` and of the random map ``f_g`` (``mask_g = MASK(f_g)``). ``w_outside`` weights the
    last three terms.
    """
    return w_rec * sq(mask, mask_r) + w_outside * (sq(f * mask_r) + sq(f_r * mask_r) + sq(f_g * mask_g))


# --------------------------------------------------------------------------- Sec. 2.4: reconstruction / translation


def loss_D_assist(d_t: Pairs, c_t: Pairs, *, w_adv: float = 1.0, w_class: float = 1.0) -> torch.Tensor:
    """``loss_{D,assist} = sum_i sum_{j != i} (||d_{t,j,i}||_2^2 + ||c_{t,j,i} - i||_2^2)`` (Sec. 2.4).

    ``d_t[(j, i)]`` / ``c_t[(j, i)]`` are the discriminator's real/fake and class outputs on
    ``x_{t,j,i}``, modality j translated into modality i: fake, of class i. The real-image
    terms of the discriminator are in :func:`loss_D` / :func:`loss_D_class` (Sec. 2.6), which
    the same discriminator step adds.
    """
    _check_pairs(d_t, "loss_D_assist")
    total = sum(w_adv * sq(d) for d in d_t.values())
    return total + sum(w_class * sq(c, _class_target(c, i)) for (j, i), c in c_t.items())


def loss_G_assist(d_t: Pairs, c_t: Pairs, *, w_adv: float = 1.0, w_class: float = 1.0) -> torch.Tensor:
    """``loss_{G,assist} = sum_i sum_{j != i} (||d_{t,j,i} - 1||_2^2 + ||c_{t,j,i} - i||_2^2)`` (Sec. 2.4).

    Adversarial and class-guidance loss of the translations ``x_{t,j,i}`` (see :func:`loss_D_assist`).
    """
    _check_pairs(d_t, "loss_G_assist")
    total = sum(w_adv * sq(d, 1.0) for d in d_t.values())
    return total + sum(w_class * sq(c, _class_target(c, i)) for (j, i), c in c_t.items())


def loss_sv_x(x: Sequence[torch.Tensor], x_r: Sequence[torch.Tensor]) -> torch.Tensor:
    """``loss_sv = sum_i ||x_i - x_{r,i}||_2^2`` (Sec. 2.4, modality self-reconstruction).

    ``x_{r,i} = DC(EC(x_i), i)``. Named ``loss_sv_x`` because the paper reuses ``loss_sv`` for the
    structure-map loss of Sec. 2.3 (:func:`loss_sv`).
    """
    _check_same_length(x, x_r, "loss_sv_x")
    return sum(sq(a, b) for a, b in zip(x, x_r))


def loss_cycle(x: Sequence[torch.Tensor], x_cr: Pairs) -> torch.Tensor:
    """``loss_cycle = sum_i sum_{j != i} ||x_i - x_{cr,j,i}||_2^2`` (Sec. 2.4).

    ``x_cr[(j, i)]`` is ``x_i`` translated into modality j and back into modality i.
    """
    _check_pairs(x_cr, "loss_cycle")
    return sum(sq(x[i], xc) for (j, i), xc in x_cr.items())


def loss_cycle_consistency(x_cr: Pairs) -> torch.Tensor:
    """``loss_{cycle,consistency} = sum_i sum_{j != i} sum_{k != j, k != i} ||x_{cr,j,i} - x_{cr,k,i}||_2^2`` (Sec. 2.4).

    All cycle reconstructions of the same ``x_i`` (through different modalities j, k) agree.
    Ordered (j, k): each unordered pair counts twice, as written.
    """
    _check_pairs(x_cr, "loss_cycle_consistency")
    total = torch.zeros((), device=next(iter(x_cr.values())).device)
    for (j, i), a in x_cr.items():
        for (k, i2), b in x_cr.items():
            if i2 == i and k != j:
                total = total + sq(a, b)
    return total


def loss_code_consistency(code: Sequence[torch.Tensor], code_t: Pairs) -> torch.Tensor:
    """``loss_{code,consistency} = sum_i sum_{j != i} ||code_i - code_{t,i,j}||_2^2`` (Sec. 2.4).

    ``code_t[(i, j)]`` = ``code_{t,i,j}``, the code of ``x_i`` translated into modality j,
    re-encoded; it must equal ``code_i = EC(x_i)`` (the code is modality-invariant). Note the
    key order (i, j) = (source, target), as the paper's subscript.
    """
    _check_pairs(code_t, "loss_code_consistency")
    return sum(sq(code[i], ct) for (i, j), ct in code_t.items())


def loss_sv_l(
    label: Sequence[torch.Tensor],
    label_r: Sequence[torch.Tensor],
    *,
    class_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """``loss_{sv,l} = sum_i ||label_i - label_{r,i}||_2^2`` (Sec. 2.4; the same form in Sec. 2.6 and 2.9).

    ``label[i]``: one-hot target ``(B, n_classes, H, W)`` (``medsyn.data.structure.one_hot_label_torch``);
    ``label_r[i]``: the segmenter's probabilities for modality i, same shape. In Sec. 2.4 the
    target is each real image's own label ``l_i``; in Sec. 2.6 every generated modality has the
    input label (pass ``[label] * n``). Each class channel contributes its own mean squared
    error, weighted by ``class_weights[c]`` (default 1 for every class): the sum over channels
    is the squared norm of the one-hot difference. Lesion classes are rare, so class weights
    matter in practice (the authors' code weights BRATS2015's classes 0–4 as 0.02 : 0.2 : 1 : 1 : 1).
    """
    _check_same_length(label, label_r, "loss_sv_l")
    total = torch.zeros((), device=label_r[0].device)
    for t, p in zip(label, label_r):
        if t.shape != p.shape:
            raise ValueError(f"loss_sv_l: target {tuple(t.shape)} and prediction {tuple(p.shape)} differ")
        per_class = ((t - p) ** 2).mean(dim=tuple(d for d in range(p.ndim) if d != 1))
        if class_weights is not None:
            if len(class_weights) != per_class.numel():
                raise ValueError(f"loss_sv_l: {len(class_weights)} class weights for {per_class.numel()} classes")
            per_class = per_class * torch.as_tensor(class_weights, dtype=per_class.dtype, device=per_class.device)
        total = total + per_class.sum()
    return total


# --------------------------------------------------------------------------- Sec. 2.6: multimodal generation


def loss_D(
    d: Sequence[torch.Tensor], d_g: Sequence[torch.Tensor], *, w_real: float = 1.0, w_fake: float = 1.0
) -> torch.Tensor:
    """``loss_D = sum_i (||d_i - 1||_2^2 + ||d_{g,i}||_2^2)`` (Sec. 2.6).

    ``d[i]`` = real/fake output on the real ``x_i``, ``d_g[i]`` on the synthetic ``x_{g,i}``.
    """
    _check_same_length(d, d_g, "loss_D")
    return sum(w_real * sq(a, 1.0) + w_fake * sq(b) for a, b in zip(d, d_g))


def loss_G(d_g: Sequence[torch.Tensor]) -> torch.Tensor:
    """``loss_G = sum_i ||d_{g,i} - 1||_2^2`` (Sec. 2.6)."""
    if not d_g:
        raise ValueError("loss_G: no outputs given")
    return sum(sq(b, 1.0) for b in d_g)


def loss_D_class(
    c: Sequence[torch.Tensor], c_g: Sequence[torch.Tensor], *, w_real: float = 1.0, w_fake: float = 1.0
) -> torch.Tensor:
    """``loss_{D,class} = sum_i (||c_i - i||_2^2 + ||c_{g,i} - i||_2^2)`` (Sec. 2.6).

    The discriminator learns the modality of real ``x_i`` and of the synthetic ``x_{g,i}`` it
    was asked for (ACGAN-style). ``w_fake = 0`` drops the synthetic term (the authors' code does).
    """
    _check_same_length(c, c_g, "loss_D_class")
    return sum(
        w_real * sq(a, _class_target(a, i)) + w_fake * sq(b, _class_target(b, i))
        for i, (a, b) in enumerate(zip(c, c_g))
    )


def loss_G_class(c_g: Sequence[torch.Tensor]) -> torch.Tensor:
    """``loss_{G,class} = sum_i ||c_{g,i} - i||_2^2`` (Sec. 2.6)."""
    if not c_g:
        raise ValueError("loss_G_class: no outputs given")
    return sum(sq(b, _class_target(b, i)) for i, b in enumerate(c_g))


def loss_sv_f(
    f: torch.Tensor, f_g: Sequence[torch.Tensor], *, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """``loss_{sv,f} = sum_i ||f - f_{g,i}||_2^2`` (Sec. 2.6).

    ``f``: the input structure map ``(B, 1, H, W)``; ``f_g[i]``: Algorithm 1 applied to the
    synthetic ``x_{g,i}`` — use ``structural_feature_map_torch(x, mode="ste")`` so a gradient
    reaches the generator (the hard binarisation has none).

    ``keep`` (optional, ``(B, 1, H, W)``, 1 = compare): restricts the comparison, e.g. to
    ``mask_{l}`` (Algorithm 2 of the input label, 1 outside the lesion), because ``f`` has no
    structure inside the lesion while a synthetic lesion has edges. The paper's equation has no
    such mask (default None); the authors' code applies it to both sides.
    """
    if not f_g:
        raise ValueError("loss_sv_f: no generated structure maps given")
    if keep is None:
        return sum(sq(f, fg) for fg in f_g)
    return sum(sq(f * keep, fg * keep) for fg in f_g)


def loss_trans(x_g: Sequence[torch.Tensor], x_gt: Pairs) -> torch.Tensor:
    """``loss_trans = sum_i sum_{j != i} ||x_{g,i} - x_{gt,j,i}||_2^2`` (Sec. 2.6).

    ``x_gt[(j, i)]`` = ``x_{gt,j,i}``: the synthetic modality j re-encoded and decoded as
    modality i; it must equal the synthetic ``x_{g,i}`` (the modalities are registered).
    """
    _check_pairs(x_gt, "loss_trans")
    return sum(sq(x_g[i], xt) for (j, i), xt in x_gt.items())


def loss_trans_code(
    code_g: torch.Tensor, code_g_i: Sequence[torch.Tensor], *, w_input: float = 1.0, w_pair: float = 1.0
) -> torch.Tensor:
    """``loss_{trans,code} = ||code_g - code_{g,i}||_2^2 + sum_i sum_{j != i} ||code_{g,i} - code_{g,j}||_2^2`` (Sec. 2.6).

    ``code_g``: code of the fused input; ``code_g_i[i]``: the synthetic ``x_{g,i}`` re-encoded
    by the modality encoder. The first term has no printed sum over i; it is summed over i
    (every synthetic modality must keep the input's code). Ordered pairs in the second term.
    """
    if not code_g_i:
        raise ValueError("loss_trans_code: no codes given")
    first = sum(sq(code_g, c) for c in code_g_i)
    second = sum(sq(a, b) for i, a in enumerate(code_g_i) for j, b in enumerate(code_g_i) if j != i)
    return w_input * first + w_pair * second


def loss_outside_mask(x: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """``sum_i ||x_i * mask||_2^2``: no synthetic intensity outside the brain mask.

    Not among the equations of Sec. 2.6, but Sec. 2.3 trains the MASK generator "to prevent the
    pixel region of the MRI generated from the structure map from exceeding the brain outline";
    this is that constraint (the authors' code has it). ``mask``: Algorithm 2 / MASK convention,
    1 outside the brain. Weight 0 in :class:`QuLossWeights` switches it off.
    """
    if not x:
        raise ValueError("loss_outside_mask: no images given")
    return sum(sq(xi * mask) for xi in x)


# --------------------------------------------------------------------------- weights


@dataclass
class QuLossWeights:
    """The weights omega of every loss term.

    The paper names ``omega_{i,j}`` (Sec. 2.3) but gives no value for any of them. The defaults
    are the authors' public code (github.com/quyili/MultimodalGeneration, ``OPEN_CODE/
    get_f_and_mask/VAE_model.py`` and ``OPEN_CODE/get_MRI/GAN_model.py``, commit 134c1d3),
    converted to the conventions of this module (mean squared errors; ordered pairs, so a weight
    that the code applies to unordered pairs is halved). Terms the paper has and the code lacks
    get the weight of their nearest sibling and are marked "paper only".
    """

    NUMERIC_BOUNDS: ClassVar[dict[str, Bound]] = {"*": Bound(0, note="a loss weight; 0 switches the term off")}

    # Stage 1, Sec. 2.3 (VAE_model.py)
    FD_f: float = 0.1  # loss_{FD_f}, both terms 0.1
    D_f: float = 0.001  # loss_{D_f}
    G_f_code: float = 0.1  # loss_{G_f}, ||FD_f(code_f) - 1||^2
    G_f_map: float = 100.0  # loss_{G_f}, ||D_f(f_g) - 1||^2
    normal: float = 0.1  # loss_normal, both terms
    sv_rec: float = 50.0  # loss_sv, ||f - f_r||^2
    sv_outside: float = 5.0  # loss_sv, ||f_r * mask||^2
    mask_rec: float = 25.0  # loss_mask, ||mask - mask_r||^2
    mask_outside: float = 5.0  # loss_mask, the three ||. * mask||^2 terms
    # Stage 2, Sec. 2.4 (GAN_model.py)
    D_assist_adv: float = 10.0  # loss_{D,assist}, ||d_{t,j,i}||^2
    D_assist_class: float = 100.0  # loss_{D,assist}, ||c_{t,j,i} - i||^2 (paper only; as D_class)
    G_assist_adv: float = 10.0  # loss_{G,assist}, ||d_{t,j,i} - 1||^2
    G_assist_class: float = 100.0  # loss_{G,assist}, ||c_{t,j,i} - i||^2
    sv_x: float = 5.0  # loss_sv (modality reconstruction)
    cycle: float = 10.0  # loss_cycle
    cycle_consistency: float = 1.0  # loss_{cycle,consistency} (code: 2 on unordered pairs)
    code_consistency: float = 5.0  # loss_{code,consistency}
    sv_l: float = 125.0  # loss_{sv,l} (real images, trains the segmenters; also Sec. 2.6)
    sv_l_class_weights: tuple[float, ...] | None = None  # code, BRATS2015: (0.02, 0.2, 1, 1, 1)
    # Stage 2, Sec. 2.6 (GAN_model.py)
    D_real: float = 100.0  # loss_D, ||d_i - 1||^2
    D_fake: float = 70.0  # loss_D, ||d_{g,i}||^2
    G: float = 70.0  # loss_G
    D_class_real: float = 100.0  # loss_{D,class}, ||c_i - i||^2
    D_class_fake: float = 100.0  # loss_{D,class}, ||c_{g,i} - i||^2 (paper only; as the real term)
    G_class: float = 100.0  # loss_{G,class}
    sv_f: float = 15.0  # loss_{sv,f}
    sv_l_gen: float = 125.0  # loss_{sv,l} on synthetic images (trains the generator only)
    trans: float = 20.0  # loss_trans
    trans_code_input: float = 1.0  # loss_{trans,code}, ||code_g - code_{g,i}||^2
    trans_code_pair: float = 0.1  # loss_{trans,code}, pairs (code: 0.2 on unordered pairs)
    outside_mask: float = 1.5  # loss_outside_mask (Sec. 2.3's purpose of MASK; code: 1.5)
