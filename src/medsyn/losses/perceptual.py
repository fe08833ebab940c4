"""MedGAN's non-adversarial losses (Armanious et al., Sec. 2.2-2.5) and PAN's margin term.

Pure functions on lists of feature maps (B, d, h, w); every value is a mean over the batch of
the per-sample quantity the paper writes.

Perceptual loss, discriminator features D_i (layer 0 = the raw discriminator input):

    P_i(G(y), x) = 1/(h_i w_i d_i) ||D_i(G(y), y) - D_i(x, y)||_1                     Eq. 6
    L_perceptual = sum_{i=0}^{L} λ_pi P_i                                              Eq. 7

Style and content losses, VGG-19 features V_j (first layer of block j, see medsyn.models.vgg):

    Gr_j(x)_{m,n} = 1/(h_j w_j d_j) sum_{h,w} V_j(x)_{h,w,m} V_j(x)_{h,w,n}            Eq. 9
    L_style   = sum_j λ_sj 1/(4 d_j^2) ||Gr_j(G(y)) - Gr_j(x)||_F^2                   Eq. 10
    L_content = sum_j λ_cj 1/(h_j w_j d_j) ||V_j(G(y)) - V_j(x)||_F^2                 Eq. 11

Total generator objective (Eq. 12, Algorithm 1 line 8):

    L_MedGAN = L_cGAN + λ1 L_perceptual + λ2 L_style + λ3 L_content,  λ1 = 20, λ2 = λ3 = 1e-4

Note on layer 0: the discriminator reads concat(y, x). Its source channels are identical for
G(y) and x, so averaging over the whole input would give P_0 = C_x / (C_y + C_x) · mean|G(y) - x|
(half the pixel MAE for one source). Eq. 6 means the image: callers pass D_0 = the image channels
only (``MedGAN._perceptual_features``), so P_0 = mean|G(y) - x|.

PAN (Wang et al. 2018) trains its discriminator to keep the perceptual distance of the hidden
layers above a positive margin m: L_D = L_cGAN,D + [m - L_P]^+ (:func:`pan_discriminator_loss`).
PAN's L_P uses the hidden layers only (MedGAN Sec. 2.2: PAN has no pixel term), so layer 0 is
left out there by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from medsyn.errors import ConfigError
from medsyn.models.vgg import MEDGAN_CONTENT_WEIGHTS, MEDGAN_STYLE_WEIGHTS

#: λ1, λ2, λ3 of Eq. 12 (MedGAN Sec. 2.5 and Algorithm 1: "λ1 = 20 and λ2 = λ3 = 0.0001").
LAMBDA_PERCEPTUAL = 20.0
LAMBDA_STYLE = 1e-4
LAMBDA_CONTENT = 1e-4


def _check_pairs(name: str, fake: Sequence[torch.Tensor], real: Sequence[torch.Tensor],
                 weights: Sequence[float] | None) -> list[float]:
    if len(fake) != len(real):
        raise ValueError(f"{name}: {len(fake)} fake feature maps but {len(real)} real ones")
    if not fake:
        raise ValueError(f"{name}: no feature maps given")
    for i, (f, r) in enumerate(zip(fake, real)):
        if f.shape != r.shape:
            raise ValueError(f"{name}: layer {i} shapes differ: fake {tuple(f.shape)} vs real {tuple(r.shape)}")
    w = [1.0] * len(fake) if weights is None else [float(x) for x in weights]
    if len(w) != len(fake):
        raise ConfigError(f"{name} weights: got {len(w)} values for {len(fake)} layers")
    if any(x < 0 for x in w):
        raise ConfigError(f"{name} weights: got {w}, expected values ≥ 0")
    return w


def perceptual_terms(feats_fake: Sequence[torch.Tensor], feats_real: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """P_i of Eq. 6 per layer and sample: list of (B,) tensors, mean |D_i(G(y)) - D_i(x)|."""
    _check_pairs("perceptual loss", feats_fake, feats_real, None)
    return [(f - r).abs().flatten(1).mean(dim=1) for f, r in zip(feats_fake, feats_real)]


def perceptual_loss(feats_fake: Sequence[torch.Tensor], feats_real: Sequence[torch.Tensor],
                    weights: Sequence[float] | None = None) -> torch.Tensor:
    """L_perceptual = sum_i λ_pi P_i (MedGAN Eq. 6-7), averaged over the batch.

    feats_fake / feats_real: the discriminator's ``[input, h_1, …, h_L]`` for (G(y), y) and
    (x, y) (``PatchGAN(..., return_features=True)``); layer 0 — the raw input — carries the
    pixel term. weights: λ_pi, one per layer; equal (1) by default (Sec. 2.5: "equal influence").
    The real features need no gradient (detach them or not, G's gradient is the same).
    """
    w = _check_pairs("perceptual loss", feats_fake, feats_real, weights)
    total = feats_fake[0].new_zeros(feats_fake[0].shape[0])
    for lam, p in zip(w, perceptual_terms(feats_fake, feats_real)):
        if lam:
            total = total + lam * p
    return total.mean()


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    """Gr(x) of MedGAN Eq. 9: (B, d, h, w) → (B, d, d), Gr_{m,n} = sum_{h,w} V_m V_n / (h w d).

    Computed in float32 (float64 inputs stay float64), with autocast off.
    Note the paper's normalisation by h·w·d (Gatys et al. do not normalise the Gram matrix and
    put 1/(4 N^2 M^2) in the loss; MedGAN normalises here *and* divides by 4 d^2 in Eq. 10).
    """
    if f.ndim != 4:
        raise ValueError(f"gram_matrix expects (B, d, h, w), got {tuple(f.shape)}")
    b, d, h, w = f.shape
    # float32 and outside autocast: sums over h·w of products of deep activations overflow fp16
    with torch.autocast(device_type=f.device.type, enabled=False):
        v = f.reshape(b, d, h * w)
        v = v if v.dtype == torch.float64 else v.float()
        return torch.bmm(v, v.transpose(1, 2)) / (h * w * d)


def style_loss(vgg_feats_fake: Sequence[torch.Tensor], vgg_feats_real: Sequence[torch.Tensor],
               weights: Sequence[float] = MEDGAN_STYLE_WEIGHTS) -> torch.Tensor:
    """L_style = sum_j λ_sj / (4 d_j^2) ||Gr_j(G(y)) - Gr_j(x)||_F^2 (MedGAN Eq. 10), batch mean.

    vgg_feats_*: V_j per block (``VGG19(...)`` outputs, relu1_1 … relu5_1 by default).
    weights: λ_sj; default first and last block only (Sec. 2.5). Zero-weight blocks are skipped.
    """
    w = _check_pairs("style loss", vgg_feats_fake, vgg_feats_real, weights)
    total = vgg_feats_fake[0].new_zeros(vgg_feats_fake[0].shape[0])
    for lam, f, r in zip(w, vgg_feats_fake, vgg_feats_real):
        if not lam:
            continue
        d = f.shape[1]
        diff = gram_matrix(f) - gram_matrix(r)
        total = total + lam * diff.pow(2).sum(dim=(1, 2)) / (4.0 * d * d)
    return total.mean()


def content_loss(vgg_feats_fake: Sequence[torch.Tensor], vgg_feats_real: Sequence[torch.Tensor],
                 weights: Sequence[float] = MEDGAN_CONTENT_WEIGHTS) -> torch.Tensor:
    """L_content = sum_j λ_cj / (h_j w_j d_j) ||V_j(G(y)) - V_j(x)||_F^2 (MedGAN Eq. 11), batch mean.

    weights: λ_cj; default all but the deepest block (Sec. 2.5). Zero-weight blocks are skipped.
    """
    w = _check_pairs("content loss", vgg_feats_fake, vgg_feats_real, weights)
    total = vgg_feats_fake[0].new_zeros(vgg_feats_fake[0].shape[0])
    for lam, f, r in zip(w, vgg_feats_fake, vgg_feats_real):
        if lam:
            total = total + lam * (f - r).pow(2).flatten(1).mean(dim=1)
    return total.mean()


def pan_discriminator_loss(feats_fake: Sequence[torch.Tensor], feats_real: Sequence[torch.Tensor],
                           margin: float, weights: Sequence[float] | None = None,
                           include_input: bool = False) -> torch.Tensor:
    """PAN's perceptual term for the discriminator: E[ max(0, m - L_P(G(y), x)) ].

    The discriminator *maximises* the perceptual distance between its features of translated and
    real images, up to the positive margin m (Wang et al. 2018, PAN); add this to the
    discriminator's adversarial loss. Computed per sample, then averaged.

    feats_*: ``[input, h_1, …, h_L]`` as for :func:`perceptual_loss`, with gradients reaching D
    (the fake image itself detached by the caller). include_input: count layer 0 too (PAN does
    not). weights: λ for the layers used (hidden ones only unless ``include_input``); equal by default.
    """
    if not margin > 0:
        raise ConfigError(f"PAN margin m: got {margin}, expected a positive number")
    fake, real = (list(feats_fake), list(feats_real)) if include_input else (list(feats_fake[1:]), list(feats_real[1:]))
    w = _check_pairs("PAN perceptual term", fake, real, weights)
    dist = fake[0].new_zeros(fake[0].shape[0])
    for lam, p in zip(w, perceptual_terms(fake, real)):
        if lam:
            dist = dist + lam * p
    return torch.relu(margin - dist).mean()


@dataclass(frozen=True)
class MedGANLossWeights:
    """λ1, λ2, λ3 of MedGAN Eq. 12 (Sec. 2.5, Algorithm 1)."""

    perceptual: float = LAMBDA_PERCEPTUAL  # λ1 = 20
    style: float = LAMBDA_STYLE  # λ2 = 1e-4
    content: float = LAMBDA_CONTENT  # λ3 = 1e-4


def medgan_generator_loss(adversarial: torch.Tensor, perceptual: torch.Tensor, style: torch.Tensor,
                          content: torch.Tensor, weights: MedGANLossWeights = MedGANLossWeights(),
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_MedGAN = L_cGAN + λ1 L_perceptual + λ2 L_style + λ3 L_content (MedGAN Eq. 12).

    adversarial: the generator's cGAN term, -log D(G(y), y) (Algorithm 1 line 4; BCE-with-logits
    against 1 on the discriminator's logits). Returns (total, named terms) with keys
    ``g/cgan``, ``g/perceptual``, ``g/style``, ``g/content`` (unweighted, detached) and ``g/total``.
    """
    total = (adversarial + weights.perceptual * perceptual + weights.style * style
             + weights.content * content)
    parts = {"g/cgan": adversarial, "g/perceptual": perceptual, "g/style": style,
             "g/content": content, "g/total": total}
    return total, {k: v.detach() for k, v in parts.items()}
