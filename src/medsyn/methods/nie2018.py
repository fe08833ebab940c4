"""Nie et al., "Dual Adversarial Learning with Attention Mechanism for Fine-grained Medical Image
Synthesis", MICCAI 2018 (papers/000; 002 is a later write-up of the same method).

G: a 2.5D UNet (5 adjacent source slices → the target's centre slice, Sec. 2.2, 2.5).
D1: global CNN critic trained as a WGAN-GP (Eq. 2), G's term Eq. 3.
D2: local dense FCN giving a per-pixel confidence map M ∈ [0, 1], BCE (Eq. 4–6; the paper sums it over
    pixels, the default here averages it — ``bce_reduction``, docs/nie2018.md).
Attention: L_AttG = (1 − M)^β ⊙ |Y − G(X)|^p (Eq. 7–8), M from D2 on G(X), detached.
L_G = L_AttG + λ1·L_G_ADV1 + λ2·L_ADV2 (Eq. 9).
Training (Sec. 2.3, 2.5): Adam, lr G 5e-3, D1 1e-4, D2 1e-3, ×0.5 (G) and ×0.2 (D1, D2) every 2
epochs, mini-batch 10, D then G on *different* mini-batches.

The baselines of Table 1 and the ablations of Sec. 3.1–3.2 are the same step with parts
switched off (see the ``register`` calls at the bottom). See docs/nie2018.md for the choices the
paper leaves open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from medsyn.errors import ConfigError
from medsyn.losses.adversarial import d2_loss, bce_map_loss, gradient_penalty, wgan_critic_loss, wgan_generator_loss
from medsyn.losses.attention import attention_loss
from medsyn.losses.reconstruction import gradient_difference_loss, lp_loss
from medsyn.methods.base import Batch, Method, MethodSpec, frozen, register
from medsyn.models.discriminators.nie import GlobalDiscriminator, LocalDiscriminator
from medsyn.models.generators.unet25d import UNet25D

PAPER = ("Nie et al., MICCAI 2018: Dual Adversarial Learning with Attention Mechanism for Fine-grained Medical "
         "Image Synthesis (Nie, Xiang, Wang, Shen)")


@dataclass
class NieConfig:
    """Every hyper-parameter of Nie et al. 2018 with its source; choices marked (choice)."""

    # --- generator G (Sec. 2.2, 2.5) ---
    generator: Literal["unet", "fcn"] = "unet"  # fcn = the FCN baseline: no skip connections
    base_filters: int = 64  # (choice) paper: "a typical UNet" → Ronneberger's 64
    depth: int = 3  # (choice) pooling levels: 144² → 18², as D1 (the author's code has 4; docs/nie2018.md)
    g_norm: Literal["batch", "instance", "none"] = "batch"
    final_activation: Literal["tanh", "none"] = "tanh"  # targets are scaled to [-1, 1]
    # --- discriminators (Sec. 2.3, 2.5) ---
    use_d1: bool = True  # global CNN critic
    use_d2: bool = True  # local dense FCN
    d1_loss: Literal["wgan-gp", "bce"] = "wgan-gp"  # bce = sGAN's classical discriminator [15]
    d1_norm: Literal["batch", "layer", "none"] = "batch"  # paper: conv + BN + ReLU + max-pool
    d2_upsampling: bool = True  # 000: three down + three up stages; 002: down-sampling only
    spectral_norm: bool = True  # "all the layers except the last one"
    condition: Literal["target", "source+target"] = "target"  # what D1/D2 see (choice: paper's Eq. 2–6)
    # --- losses (Sec. 2.2–2.4) ---
    p: int = 1  # L1 (p=1) or L2 (p=2), Eq. 1/7
    attention: bool = True  # difficulty-aware attention, Eq. 7–8
    beta: float = 2.0  # (choice) β of F = (1 − M)^β, Eq. 8: focal-loss γ = 2, the author's code — docs/nie2018.md
    lambda_gp: float = 10.0  # WGAN-GP λ, Eq. 2 (Gulrajani et al.)
    lambda1: float = 0.05  # λ1, global adversarial term, Sec. 2.5
    lambda2: float = 0.1  # λ2, local adversarial term, Sec. 2.5
    # gradient difference loss (Mathieu et al.), part of the sGAN baseline [15] (Nie et al. 2017: λ_GDL = 1);
    # 0 = off (the 2018 method has none)
    lambda_gdl: float = 0.0
    bce_reduction: Literal["mean", "sum"] = "mean"  # (choice) Eq. 5 sums over pixels
    # (choice) pixels of Eq. 1/7 and the GDL: "patch" = all (the paper); "foreground" = the source mask only
    # (background is filled in at inference anyway) — docs/nie2018.md, "Small-data configuration"
    loss_region: Literal["patch", "foreground"] = "patch"
    # --- optimisation (Sec. 2.5) ---
    lr_g: float = 5e-3
    lr_d1: float = 1e-4
    lr_d2: float = 1e-3
    lr_decay_g: float = 0.5
    lr_decay_d: float = 0.2
    lr_decay_every: int = 2  # epochs
    adam_betas: list[float] | None = None  # (choice) None → (0.5, 0.999), the usual GAN setting
    n_critic: int = 1  # D updates per G update (Sec. 2.3: alternating)
    # (choice, not in the paper) the first N generator updates use the reconstruction term alone
    # (Eq. 1; D1, D2 neither trained nor used), then Eq. 9 as written: 0 = the paper.
    # Generator pre-training as in SRGAN; for short CPU budgets, docs/nie2018.md
    warmup_steps: int = 0

    def validate(self, prefix: str = "params") -> None:
        if self.p not in (1, 2):
            raise ConfigError(f"config key '{prefix}.p': got {self.p}, allowed values: 1, 2")
        if self.lambda_gdl < 0:
            raise ConfigError(f"config key '{prefix}.lambda_gdl': got {self.lambda_gdl}, expected ≥ 0 (0 switches it off)")
        if self.beta < 0:
            raise ConfigError(f"config key '{prefix}.beta': got {self.beta}, expected ≥ 0")
        if self.attention and not self.use_d2:
            raise ConfigError(f"config key '{prefix}.attention': the attention loss needs the local "
                              f"discriminator D2 (set {prefix}.use_d2=true or {prefix}.attention=false)")
        if self.warmup_steps < 0:
            raise ConfigError(f"config key '{prefix}.warmup_steps': got {self.warmup_steps}, expected ≥ 0")
        if self.n_critic < 1 or self.lr_decay_every < 1 or self.base_filters < 1 or self.depth < 1:
            raise ConfigError(f"config section '{prefix}': n_critic, lr_decay_every, base_filters and depth must be ≥ 1")
        if self.adam_betas is not None and len(self.adam_betas) != 2:
            raise ConfigError(f"config key '{prefix}.adam_betas': expected two numbers, e.g. [0.5, 0.999]")


class NieDualGAN(Method):
    """G + optional D1 (global WGAN-GP critic) + optional D2 (local confidence FCN)."""

    def __init__(self, cfg: NieConfig, *, in_channels: int, out_channels: int = 1,
                 patch_size: tuple[int, int] = (144, 144)):
        super().__init__()
        self.cfg = cfg
        self.in_channels = in_channels
        self.networks["G"] = UNet25D(in_channels, out_channels, base=cfg.base_filters, depth=cfg.depth,
                                     norm=cfg.g_norm, skip=cfg.generator == "unet",
                                     final_activation=cfg.final_activation)
        d_in = out_channels + (in_channels if cfg.condition == "source+target" else 0)
        if cfg.use_d1:
            self.networks["D1"] = GlobalDiscriminator(d_in, input_size=tuple(patch_size), norm=cfg.d1_norm,
                                                      spectral_norm=cfg.spectral_norm)
        if cfg.use_d2:
            self.networks["D2"] = LocalDiscriminator(d_in, upsampling=cfg.d2_upsampling,
                                                     spectral_norm=cfg.spectral_norm)
        betas = tuple(cfg.adam_betas) if cfg.adam_betas else (0.5, 0.999)
        lrs = {"G": cfg.lr_g, "D1": cfg.lr_d1, "D2": cfg.lr_d2}
        decay = {"G": cfg.lr_decay_g, "D1": cfg.lr_decay_d, "D2": cfg.lr_decay_d}
        for name, net in self.networks.items():
            opt = torch.optim.Adam(net.parameters(), lr=lrs[name], betas=betas)
            self.optimizers[name] = opt
            self.schedulers[name] = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_decay_every, gamma=decay[name])

    # ------------------------------------------------------------------------------------------
    def _d_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the discriminators see: the target alone (paper's equations) or source + target."""
        return y if self.cfg.condition == "target" else torch.cat([x, y], dim=1)

    def _confidence_logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net("D2")(self._d_input(x, y), return_logits=True)

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, torch.Tensor]:
        cfg, rt, out = self.cfg, self.runtime, {}
        G = self.net("G")
        adversarial = step > cfg.warmup_steps  # after the (optional) reconstruction-only warm-up
        use_d1, use_d2 = cfg.use_d1 and adversarial, cfg.use_d2 and adversarial
        attention = cfg.attention and adversarial

        # 1) discriminators on one mini-batch (Sec. 2.3): real targets vs G's outputs
        if use_d1 or use_d2:
            for _ in range(cfg.n_critic):
                b = next_batch()
                x, y = b["source"], b["target"]
                with torch.no_grad(), rt.autocast():
                    fake = G(x).float()  # no graph into G: D's step never reaches the generator
                real_in, fake_in = self._d_input(x, y), self._d_input(x, fake)
                if use_d1:
                    D1 = self.net("D1")
                    if cfg.d1_loss == "wgan-gp":
                        with rt.autocast():
                            d_real, d_fake = D1(real_in).float(), D1(fake_in).float()
                        wgan = wgan_critic_loss(d_real, d_fake)  # Eq. 2, first two terms
                        with rt.autocast(enabled=False):  # GP's double backward in float32
                            # interpolate the target images only; a source condition is passed unchanged
                            cond = x if cfg.condition == "source+target" else None
                            gp = gradient_penalty(D1, y, fake, lambda_gp=cfg.lambda_gp, condition=cond,
                                                  condition_first=True)
                        loss_d1 = wgan + gp
                        out["d1/wasserstein"], out["d1/gp"] = -wgan.detach(), gp.detach()
                    else:
                        with rt.autocast():
                            d_real, d_fake = D1(real_in).float(), D1(fake_in).float()
                        loss_d1 = d2_loss(d_real, d_fake, reduction="mean")  # classical BCE GAN
                        out["d1/bce"] = loss_d1.detach()
                    self.optimizers["D1"].zero_grad(set_to_none=True)
                    loss_d1.backward()
                    self.optimizers["D1"].step()
                if use_d2:
                    D2 = self.net("D2")
                    with rt.autocast():
                        l_real = D2(real_in, return_logits=True).float()
                        l_fake = D2(fake_in, return_logits=True).float()
                    loss_d2 = d2_loss(l_real, l_fake, reduction=cfg.bce_reduction)  # Eq. 4–5
                    self.optimizers["D2"].zero_grad(set_to_none=True)
                    loss_d2.backward()
                    self.optimizers["D2"].step()
                    out["d2/bce"] = loss_d2.detach()

        # 2) generator on another mini-batch (Sec. 2.3), Eq. 9
        b = next_batch()
        x, y = b["source"], b["target"]
        region = b["mask"] > 0.5 if cfg.loss_region == "foreground" else None  # which pixels Eq. 1/7 cover
        ds = [self.networks[n] for n in ("D1", "D2") if n in self.networks]
        with frozen(*ds):
            with rt.autocast():
                fake = G(x).float()
            loss_g = torch.zeros((), device=fake.device)
            if attention:
                with rt.autocast():
                    logits = self._confidence_logits(x, fake).float()
                confidence = torch.sigmoid(logits).detach()  # M, Eq. 8: no gradient through M
                rec = attention_loss(fake, y, confidence, beta=cfg.beta, p=cfg.p, mask=region)  # Eq. 7
                out["g/att_l%d" % cfg.p] = rec.detach()
                out["d2/confidence_fake"] = confidence.mean()
            else:
                rec = lp_loss(fake, y, p=cfg.p, mask=region)  # Eq. 1
                out["g/l%d" % cfg.p] = rec.detach()
            loss_g = loss_g + rec
            if cfg.lambda_gdl > 0:  # sGAN [15]: sharper edges through matching image gradients
                gdl = gradient_difference_loss(fake, y, mask=region)  # same region as Eq. 1
                loss_g = loss_g + cfg.lambda_gdl * gdl
                out["g/gdl"] = gdl.detach()
            if use_d1:
                with rt.autocast():
                    d_fake = self.net("D1")(self._d_input(x, fake)).float()
                if cfg.d1_loss == "wgan-gp":
                    adv1 = wgan_generator_loss(d_fake)  # Eq. 3
                else:
                    adv1 = bce_map_loss(d_fake, True, reduction="mean")
                loss_g = loss_g + cfg.lambda1 * adv1
                out["g/adv1"] = adv1.detach()
            if use_d2:
                if attention:
                    adv_logits = logits
                else:
                    with rt.autocast():
                        adv_logits = self._confidence_logits(x, fake).float()
                adv2 = bce_map_loss(adv_logits, True, reduction=cfg.bce_reduction)  # Eq. 6
                loss_g = loss_g + cfg.lambda2 * adv2
                out["g/adv2"] = adv2.detach()
            self.optimizers["G"].zero_grad(set_to_none=True)
            loss_g.backward()
            self.optimizers["G"].step()
        out["g/total"] = loss_g.detach()
        out["g/mae_batch"] = (fake.detach() - y).abs().mean()
        return out

    #: batch norm in D2 when exporting M: "eval" (running statistics: each window's M depends on that
    #: window only) or "train" (the statistics of the batch of windows, as D2 computed M for the
    #: attention loss in training); see docs/nie2018.md
    confidence_bn: Literal["eval", "train"] = "eval"

    @torch.no_grad()
    def confidence(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor | None:
        """D2's confidence map M (B, 1, H, W) ∈ [0, 1] on G's output: low = hard to synthesise."""
        if "D2" not in self.networks:
            return None
        D2 = self.networks["D2"]
        if self.confidence_bn not in ("eval", "train"):
            raise ConfigError(f"confidence_bn: got {self.confidence_bn!r}, expected 'eval' or 'train'")
        bns = [m for m in D2.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if self.confidence_bn == "train" else []
        saved = [(m.training, m.momentum) for m in bns]
        for m in bns:  # batch statistics, running statistics left untouched (momentum 0)
            m.train(True)
            m.momentum = 0.0
        try:
            return torch.sigmoid(D2(self._d_input(x, pred), return_logits=True))
        finally:
            for m, (mode, momentum) in zip(bns, saved):
                m.train(mode)
                m.momentum = momentum


def _spec(name: str, summary: str, **defaults) -> MethodSpec:
    return register(MethodSpec(name, summary, PAPER, NieConfig, NieDualGAN, defaults))


_BASE = dict(use_d1=False, use_d2=False, attention=False)
_spec("nie-fcn", "FCN baseline: fully convolutional generator without skip connections, L1 only (Table 1)",
      generator="fcn", **_BASE)
_spec("nie-unet", "UNet baseline: 2.5D UNet, L1 only (Table 1)", **_BASE)
_spec("nie-sgan", "sGAN baseline: UNet + one global CNN discriminator with the classical BCE loss + gradient "
      "difference loss (Table 1, [15])", use_d1=True, use_d2=False, attention=False, d1_loss="bce", lambda_gdl=1.0)
_spec("nie-sgan1", "sGAN-1 ablation: UNet + global WGAN-GP critic D1 only, plain L1 (Sec. 3.1)",
      use_d1=True, use_d2=False, attention=False)
_spec("nie-sgan2", "sGAN-2 ablation: UNet + local dense-FCN discriminator D2 only, plain L1 (Sec. 3.1)",
      use_d1=False, use_d2=True, attention=False)
_spec("nie-dual", "dual-D ablation: UNet + D1 + D2, plain L1 (Sec. 3.1–3.2)", attention=False)
_spec("nie-dual-attention", "Nie et al. 2018 full method: dual discriminators + difficulty-aware attention loss")
