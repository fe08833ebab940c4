"""Armanious et al., "MedGAN: Medical Image Translation using GANs", 2018 (papers/004).

G: a CasNet — N = 6 U-blocks in series, each the pix2pix 256×256 U-net (Sec. 2.4.1–2.4.2).
D: a conditional 16×16 PatchGAN on concat(y, x) with spectral normalisation (Sec. 2.2 Eq. 8, 2.4.3),
   also the trainable feature extractor of the perceptual loss.
V: a frozen VGG-19 (user-supplied ImageNet weights) for the style and content losses (Sec. 2.3).

Notation as in the paper: y = source image, x = target image, G(y) = translated image.

    L_cGAN (G)   = −log D(G(y), y)                                        Alg. 1 line 4
    L_perceptual = Σ_i λ_pi · mean|D_i(G(y), y) − D_i(x, y)|, i = 0 (image) … L   Eq. 6–7
    L_style      = Σ_j λ_sj / (4 d_j²) · ||Gr_j(G(y)) − Gr_j(x)||_F²             Eq. 9–10
    L_content    = Σ_j λ_cj / (h_j w_j d_j) · ||V_j(G(y)) − V_j(x)||_F²          Eq. 11
    L_MedGAN     = L_cGAN + λ1 L_perceptual + λ2 L_style + λ3 L_content           Eq. 12
    L_D          = −[log D(x, y) + log(1 − D(G(y), y))]                        Alg. 1 line 10

Training (Sec. 2.5, Alg. 1): one training pair per step (batch 1), N_G = 3 generator updates on
it, then one discriminator update; Adam, lr 2e-4, β1 = 0.5; 200 epochs. One ``train_step`` is
one iteration of Alg. 1's inner loop (lines 3–12): 3 G updates + 1 D update.

The baselines of Sec. 3.2.2 / Table II (pix2pix, PAN, ID-CGAN, Fila-sGAN), the loss ablations of
Table I and the CasNet depth study of Appendix A / Fig. 6 are the same step with other defaults
(the ``register`` calls at the bottom). See docs/medgan.md for the choices the paper leaves open.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import torch
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm  # to hold D's normalised weights fixed

from medsyn.data.sampling import PatchSampler25D
from medsyn.errors import ConfigError
from medsyn.losses.adversarial import gan_bce
from medsyn.losses.perceptual import (
    LAMBDA_CONTENT,
    LAMBDA_PERCEPTUAL,
    LAMBDA_STYLE,
    MedGANLossWeights,
    content_loss,
    medgan_generator_loss,
    pan_discriminator_loss,
    perceptual_loss,
    style_loss,
)
from medsyn.losses.reconstruction import lp_loss
from medsyn.methods.base import Batch, Method, MethodSpec, frozen, register
from medsyn.models.discriminators.patchgan import MEDGAN_N_LAYERS, PIX2PIX_N_LAYERS, PatchGAN
from medsyn.models.generators.casnet import MAX_BLOCKS, MAX_DEPTH, CasNet
from medsyn.models.vgg import (
    LAYER_INDEX,
    MEDGAN_CONTENT_WEIGHTS,
    MEDGAN_STYLE_WEIGHTS,
    MEDGAN_VGG_LAYERS,
    VGG19,
    load_vgg19_weights,
    require_vgg_weights,
)

PAPER = ("Armanious et al.: MedGAN: Medical Image Translation using GANs, Computerized Medical Imaging and "
         "Graphics 79 (2020), arXiv:1806.06397")

#: PAN's discriminator margin m (Wang et al. 2018); see docs/medgan.md for how it was chosen.
PAN_MARGIN = 1.0
#: ID-CGAN's loss weights (Zhang, Sindagi & Patel 2017, arXiv 1701.05957: λ_a = 6.6e-3, λ_p = 1, λ_e = 1).
IDCGAN_LAMBDA_ADV = 6.6e-3
IDCGAN_VGG_LAYER = "relu2_2"  # ID-CGAN's perceptual layer (of VGG-16 there; VGG-19 here, MedGAN Sec. 3.2.2)
#: pix2pix's L1 weight λ (Isola et al. 2017, Eq. 4; MedGAN Eq. 5).
PIX2PIX_LAMBDA_L1 = 100.0


@dataclass
class MedGANConfig:
    """Every hyper-parameter of MedGAN and its baselines with its source; choices marked (choice)."""

    # --- generator G: CasNet (Sec. 2.4.1–2.4.2, 2.5) ---
    n_blocks: int = 6  # N U-blocks (Sec. 2.5: "N = 6"); 1 = a single U-block (pix2pix's U-net)
    depth: int = 8  # stride-2 levels per U-block: 256 → 1 px (Sec. 2.4.1); sides must divide by 2^depth
    base_channels: int = 64  # encoder filters 64, 128, 256, 512, 512, 512, 512, 512 (Sec. 2.4.1)
    norm: Literal["instance", "batch", "none"] = "instance"  # Sec. 2.5: instance normalisation, batch 1
    dropout: float = 0.0  # Sec. 2.4.1: "stochasticity is not desired" (pix2pix: 0.5)
    # --- discriminator D (Sec. 2.2 Eq. 8, 2.4.3) ---
    d_layers: int = MEDGAN_N_LAYERS  # 1 → 16×16 patches, 64 and 128 filters (MedGAN); 3 → 70×70 (pix2pix)
    d_base_channels: int = 64  # Sec. 2.4.3: 64 and 128 filters
    d_norm: Literal["instance", "batch", "none"] = "instance"  # (choice) Sec. 2.5's instance norm (2.4.3 says batch)
    spectral_norm: bool = True  # Eq. 8, on every layer of D
    # --- losses (Eq. 6–12, Sec. 2.5) ---
    lambda_cgan: float = 1.0  # weight of L_cGAN in Eq. 12 (1); ID-CGAN uses 6.6e-3
    lambda_perceptual: float = LAMBDA_PERCEPTUAL  # λ1 = 20 (Sec. 2.5, Alg. 1)
    lambda_style: float = LAMBDA_STYLE  # λ2 = 1e-4
    lambda_content: float = LAMBDA_CONTENT  # λ3 = 1e-4
    perceptual_layers: Literal["input+hidden", "hidden"] = "input+hidden"  # MedGAN keeps i = 0 (Sec. 2.2); PAN: hidden
    perceptual_weights: list[float] | None = None  # λ_pi; None → equal (Sec. 2.5: "equal influence")
    # V_j: relu1_1 … relu5_1 (Sec. 2.3); λ_sj: first + last block; λ_cj: all but the deepest (Sec. 2.5)
    vgg_layers: list[str] = field(default_factory=lambda: list(MEDGAN_VGG_LAYERS))
    style_weights: list[float] = field(default_factory=lambda: list(MEDGAN_STYLE_WEIGHTS))
    content_weights: list[float] = field(default_factory=lambda: list(MEDGAN_CONTENT_WEIGHTS))
    style_reference: Literal["target", "source"] = "target"  # Gram target: x (MedGAN); y for Fila-sGAN (Sec. 3.2.2)
    vgg19_weights: str | None = None  # torchvision-layout VGG-19 file (.pth / .safetensors); never downloaded
    lambda_l1: float = 0.0  # pixel L1 (pix2pix λ = 100, Eq. 5; Fila-sGAN)
    lambda_l2: float = 0.0  # pixel L2 (ID-CGAN)
    lambda_tv: float = 0.0  # total variation (Fila-sGAN)
    pan_margin: float = 0.0  # PAN's positive margin m on D; 0 = off (MedGAN has none, Sec. 3.2.2)
    # --- optimisation (Sec. 2.5, Alg. 1) ---
    n_g: int = 3  # N_G generator updates per discriminator update
    lr_g: float = 2e-4  # Sec. 2.5: ADAM, learning rate 0.0002
    lr_d: float = 2e-4
    beta1: float = 0.5  # Sec. 2.5: "momentum value of 0.5"
    beta2: float = 0.999  # (choice) Adam's default; the paper gives none
    fused_adam: bool = True  # (choice) fused Adam kernel: same update rule, one kernel for all parameters

    def validate(self, prefix: str = "params") -> None:
        def bad(key: str, got, expected: str) -> ConfigError:
            return ConfigError(f"config key '{prefix}.{key}': got {got!r}, expected {expected}")

        if not 1 <= self.n_blocks <= MAX_BLOCKS:
            raise bad("n_blocks", self.n_blocks, f"1-{MAX_BLOCKS} U-blocks (6 in MedGAN, 1 for pix2pix)")
        if not 1 <= self.depth <= MAX_DEPTH:
            raise bad("depth", self.depth, f"1-{MAX_DEPTH} (8 for 256×256 slices; 5 for 32×32)")
        if self.base_channels < 1 or self.d_base_channels < 1:
            raise ConfigError(f"config keys '{prefix}.base_channels' and '{prefix}.d_base_channels' must be ≥ 1")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", self.dropout, "0 ≤ p < 1 (0 in MedGAN, 0.5 in pix2pix)")
        if not 1 <= self.d_layers <= 6:
            raise bad("d_layers", self.d_layers, "1-6 (1 → 16×16 patches as MedGAN, 3 → 70×70 as pix2pix)")
        if self.n_g < 1:
            raise bad("n_g", self.n_g, "≥ 1 generator updates per discriminator update (3 in MedGAN)")
        for key in ("lr_g", "lr_d"):
            if not getattr(self, key) > 0:
                raise bad(key, getattr(self, key), "a positive learning rate (2e-4 in MedGAN)")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, getattr(self, key), "a number in [0, 1) (Adam β)")
        for key in ("lambda_cgan", "lambda_perceptual", "lambda_style", "lambda_content", "lambda_l1",
                    "lambda_l2", "lambda_tv", "pan_margin"):
            if getattr(self, key) < 0:
                raise bad(key, getattr(self, key), "a number ≥ 0 (0 switches the term off)")
        if self.lambda_cgan == 0:
            raise bad("lambda_cgan", 0, "> 0: every variant here is a conditional GAN")
        n_feats = self.d_layers + 1 + (1 if self.perceptual_layers == "input+hidden" else 0)
        if self.perceptual_weights is not None:
            if len(self.perceptual_weights) != n_feats or any(w < 0 for w in self.perceptual_weights):
                raise bad("perceptual_weights", self.perceptual_weights,
                          f"{n_feats} weights ≥ 0 (one per discriminator feature map: "
                          f"{self.perceptual_layers}, d_layers={self.d_layers}) or null for equal weights")
        unknown = [n for n in self.vgg_layers if n not in LAYER_INDEX]
        if unknown or not self.vgg_layers:
            raise bad("vgg_layers", self.vgg_layers, "VGG-19 layer names such as relu1_1 … relu5_1")
        for key in ("style_weights", "content_weights"):
            w = getattr(self, key)
            if len(w) != len(self.vgg_layers) or any(v < 0 for v in w):
                raise bad(key, w, f"{len(self.vgg_layers)} weights ≥ 0, one per entry of {prefix}.vgg_layers")

    def check_vgg_weights(self) -> None:
        """ConfigError (how to supply the file) when the style/content losses are on and no VGG-19
        weights file is named. Called when the method is built — before training, before any run
        folder is written; not by ``validate``, so configs resolve (and ``medsyn predict`` works)
        without the file. The file itself is read by ``MedGAN.before_training``, still before the run folder."""
        if self.needs_vgg and (self.vgg19_weights is None or str(self.vgg19_weights).strip() == ""):
            try:
                require_vgg_weights(None, needed_by="style/content losses")
            except ConfigError as e:
                raise ConfigError(f"{e}; or train without them: --set method=medgan-noVGG "
                                  "(MedGAN with the perceptual loss only)") from None

    @property
    def needs_vgg(self) -> bool:
        """True when the style or the content loss is on (both need the pre-trained VGG-19)."""
        return bool((self.lambda_style > 0 and any(self.style_weights))
                    or (self.lambda_content > 0 and any(self.content_weights)))


@contextlib.contextmanager
def fixed(discriminator: nn.Module) -> Iterator[None]:
    """D as a fixed function during G's updates: no gradients into its weights, and no power
    iteration in its spectral norms (their σ estimates move only in D's own update, Alg. 1 line
    12), so all N_G generator updates of one step see the same D."""
    sn = [m for m in discriminator.modules() if isinstance(m, _SpectralNorm)]
    modes = [m.training for m in sn]
    for m in sn:
        m.train(False)
    try:
        with frozen(discriminator):
            yield
    finally:
        for m, mode in zip(sn, modes):
            m.train(mode)


def total_variation(img: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV, mean |x[h+1,w] − x[h,w]| + mean |x[h,w+1] − x[h,w]| of (B, C, H, W)."""
    return (img[..., 1:, :] - img[..., :-1, :]).abs().mean() + (img[..., :, 1:] - img[..., :, :-1]).abs().mean()


class MedGAN(Method):
    """CasNet G + conditional spectral-norm PatchGAN D (+ frozen VGG-19 when style/content are on).

    Batches are 2D slices (``sample_kind="2d"``): source y (B, M, H, W), target x (B, 1, H, W),
    both scaled to about [-1, 1]; G's output is in (-1, 1) (Tanh). H and W (``data.patch_size``)
    must be multiples of 2^depth (256 for the paper's depth 8).
    """

    def __init__(self, cfg: MedGANConfig, *, in_channels: int, out_channels: int = 1,
                 patch_size: tuple[int, int] = (256, 256)):
        super().__init__()
        self.cfg = cfg
        cfg.check_vgg_weights()
        side = 2**cfg.depth
        if any(int(s) % side for s in patch_size):
            raise ConfigError(
                f"config key 'data.patch_size': {list(patch_size)} is not a multiple of 2^depth = {side} "
                f"(params.depth={cfg.depth}); use 256×256 slices with depth 8 as MedGAN, or lower params.depth "
                f"(e.g. 5 for 32×32)")
        if cfg.style_reference == "source" and cfg.needs_vgg and in_channels != 1:
            raise ConfigError(f"config key 'params.style_reference': 'source' needs one source image, "
                              f"got {in_channels} source channels; use 'target'")
        self.networks["G"] = CasNet(in_channels, out_channels, n_blocks=cfg.n_blocks, depth=cfg.depth,
                                    base_channels=cfg.base_channels, norm=cfg.norm, dropout=cfg.dropout)
        # the cGAN discriminator reads concat(y, x) (Eq. 3)
        self.networks["D"] = PatchGAN(out_channels, in_channels, n_layers=cfg.d_layers,
                                      base_channels=cfg.d_base_channels, norm=cfg.d_norm,
                                      spectral_norm=cfg.spectral_norm)
        betas = (cfg.beta1, cfg.beta2)
        for name, lr in (("G", cfg.lr_g), ("D", cfg.lr_d)):
            self.optimizers[name] = torch.optim.Adam(self.networks[name].parameters(), lr=lr, betas=betas,
                                                     fused=cfg.fused_adam or None)
        self.loss_weights = MedGANLossWeights(cfg.lambda_perceptual, cfg.lambda_style, cfg.lambda_content)
        hidden = cfg.perceptual_layers == "hidden"
        self._perc_from = 1 if hidden else 0  # D's feature list is [input, h_1, …, h_L]
        self._image_channels = out_channels  # D's input is concat(y, x): the image is the last channels
        w = cfg.perceptual_weights
        self._pan_weights = (w if hidden else w[1:]) if w is not None else None
        #: the frozen VGG-19, loaded by :meth:`before_training` (prediction never needs the file)
        self.vgg: VGG19 | None = None

    # ------------------------------------------------------------------------------------------
    def before_training(self) -> None:
        """Read and check the VGG-19 file now, before the engine writes the run folder."""
        if self.cfg.needs_vgg:
            self._load_vgg()

    def _load_vgg(self) -> VGG19:
        if self.vgg is None:
            device = next(self.networks["G"].parameters()).device
            self.vgg = load_vgg19_weights(self.cfg.vgg19_weights, layers=tuple(self.cfg.vgg_layers)).to(device)
        return self.vgg

    def _perceptual_features(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """D_i of Eq. 6 for i = 0 (MedGAN) or 1 (PAN) … L, in float32. Layer 0 is the *image* part of
        D's input concat(y, x): the source channels are the same for G(y) and x, and averaging them in
        would scale the pixel term by C_x / (C_y + C_x) (½ for one source) — Eq. 6's D_0 is the image."""
        out = [f.float() for f in feats[self._perc_from:]]
        if self._perc_from == 0:
            out[0] = out[0][:, -self._image_channels:]
        return out

    def _d_loss_inputs(self, D: nn.Module, x: torch.Tensor, fake: torch.Tensor, y: torch.Tensor):
        """D's logits and features on (x, y) and (G(y), y); one forward, so one power iteration
        per D update, unless D uses batch norm (then real and fake batches stay separate)."""
        want = self.cfg.pan_margin > 0
        if self.cfg.d_norm == "batch":
            real = D(x, y, return_features=want)
            fake_ = D(fake, y, return_features=want)
            return (real, fake_) if want else ((real, None), (fake_, None))
        out = D(torch.cat([x, fake]), torch.cat([y, y]), return_features=want)
        b = x.shape[0]
        if not want:
            return (out[:b], None), (out[b:], None)
        logits, feats = out
        return (logits[:b], [f[:b] for f in feats]), (logits[b:], [f[b:] for f in feats])

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, torch.Tensor]:
        cfg, rt = self.cfg, self.runtime
        G, D = self.net("G"), self.net("D")
        b = next_batch()
        y, x = b["source"], b["target"]  # the paper's notation: y = source, x = target (Sec. 2.1.2)
        sums: dict[str, torch.Tensor] = {}

        # Alg. 1 lines 3–9: N_G generator updates on the pair (x_l, y_l), D held fixed
        with fixed(D):
            with torch.no_grad(), rt.autocast():  # what does not depend on G: computed once per step
                feats_real = (D(x, y, return_features=True)[1] if cfg.lambda_perceptual > 0 else None)
                if cfg.needs_vgg:
                    vgg = self._load_vgg()
                    v_real = [f.float() for f in vgg(x)]
                    v_style = v_real if cfg.style_reference == "target" else [f.float() for f in vgg(y)]
            for _ in range(cfg.n_g):
                with rt.autocast():
                    fake = G(y)
                    logits, feats_fake = D(fake, y, return_features=True)
                fake = fake.float()
                terms = {"g/cgan": gan_bce(logits.float(), True)}  # −log D(G(y), y), Alg. 1 line 4 (non-saturating)
                if feats_real is not None:  # Eq. 6–7 on D's features [image (i = 0), h_1, …, h_L]
                    terms["g/perceptual"] = perceptual_loss(self._perceptual_features(feats_fake),
                                                            self._perceptual_features(feats_real),
                                                            cfg.perceptual_weights)
                if cfg.needs_vgg:
                    with rt.autocast():
                        v_fake = [f.float() for f in vgg(fake)]
                    if cfg.lambda_style > 0:
                        terms["g/style"] = style_loss(v_fake, v_style, cfg.style_weights)  # Eq. 9–10
                    if cfg.lambda_content > 0:
                        terms["g/content"] = content_loss(v_fake, v_real, cfg.content_weights)  # Eq. 11
                zero = fake.new_zeros(())
                # Eq. 12 (λ_cGAN = 1 for MedGAN) ...
                loss_g, _ = medgan_generator_loss(cfg.lambda_cgan * terms["g/cgan"], terms.get("g/perceptual", zero),
                                                  terms.get("g/style", zero), terms.get("g/content", zero),
                                                  self.loss_weights)
                # ... plus the baselines' pixel terms (all 0 for MedGAN)
                if cfg.lambda_l1 > 0:
                    terms["g/l1"] = lp_loss(fake, x, p=1)
                    loss_g = loss_g + cfg.lambda_l1 * terms["g/l1"]
                if cfg.lambda_l2 > 0:
                    terms["g/l2"] = lp_loss(fake, x, p=2)
                    loss_g = loss_g + cfg.lambda_l2 * terms["g/l2"]
                if cfg.lambda_tv > 0:
                    terms["g/tv"] = total_variation(fake)
                    loss_g = loss_g + cfg.lambda_tv * terms["g/tv"]
                self.optimizers["G"].zero_grad(set_to_none=True)
                loss_g.backward()
                self.optimizers["G"].step()  # Alg. 1 line 8
                terms["g/total"] = loss_g
                # each term as it enters L_G (λ · term), so a log shows which terms matter (Eq. 12)
                lam = {"g/cgan": cfg.lambda_cgan, "g/perceptual": cfg.lambda_perceptual, "g/style": cfg.lambda_style,
                       "g/content": cfg.lambda_content, "g/l1": cfg.lambda_l1, "g/l2": cfg.lambda_l2,
                       "g/tv": cfg.lambda_tv}
                terms.update({f"g/weighted/{k[2:]}": lam[k] * terms[k] for k in lam if k in terms})
                for k, v in terms.items():  # logged: the mean over the N_G updates
                    sums[k] = sums.get(k, 0.0) + v.detach()
        out = {k: v / cfg.n_g for k, v in sums.items()}

        # Alg. 1 lines 10–12: one discriminator update on the same pair, with the updated G
        with torch.no_grad(), rt.autocast():
            fake = G(y).float()
        with rt.autocast():
            (l_real, f_real), (l_fake, f_fake) = self._d_loss_inputs(D, x, fake, y)
        # −[log D(x, y) + log(1 − D(G(y), y))], Alg. 1 line 10
        loss_d = gan_bce(l_real.float(), True) + gan_bce(l_fake.float(), False)
        out["d/bce"] = loss_d.detach()
        if cfg.pan_margin > 0:  # PAN: D keeps the hidden-layer perceptual distance above m
            margin = pan_discriminator_loss([f.float() for f in f_fake], [f.float() for f in f_real],
                                            cfg.pan_margin, weights=self._pan_weights)
            loss_d = loss_d + margin
            out["d/pan_margin"] = margin.detach()
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()
        out["d/real"] = torch.sigmoid(l_real.detach().float()).mean()  # mean D(x, y)
        out["d/fake"] = torch.sigmoid(l_fake.detach().float()).mean()  # mean D(G(y), y)
        out["g/mae_batch"] = (fake - x).abs().mean()
        return out


class WholeSliceSampler(PatchSampler25D):
    """2D samples as Alg. 1 uses them: whole axial slices (k = 1).

    The slice is drawn as the engine's default sampler draws it (through a random foreground voxel,
    so slices holding more foreground come up more often); along every in-plane axis that the
    patch covers entirely, the patch is then centred on the slice instead of on that voxel, so
    each sample is the whole slice (padded with the background value up to ``data.patch_size``),
    exactly as sliding-window inference presents it. Axes longer than the patch (tiles of larger
    slices) keep the random position.
    """

    def _centre(self, c):
        a, b, s = super()._centre(c)
        size_a, size_b, _ = c["shape"]
        return (size_a // 2 if self.ph >= size_a else a, size_b // 2 if self.pw >= size_b else b, s)


def make_whole_slice_sampler(cfg, data, seed: int) -> WholeSliceSampler:
    """``MethodSpec.make_sampler``: the engine's patch sampler with k = 1 and whole-slice centring."""
    d = cfg.data
    return WholeSliceSampler(data.train, slice_axis=d.slice_axis, context=1, patch_size=tuple(d.patch_size),
                             foreground_fraction=d.foreground_fraction, label_fraction=d.label_fraction,
                             augment=d.augment, flip=d.flip, seed=seed)


# ------------------------------------------------------------------------------------------------
# Variants: MedGAN, its ablations (Table I), baselines (Table II), CasNet depth study (Fig. 6)
# ------------------------------------------------------------------------------------------------


def _spec(name: str, summary: str, **defaults) -> MethodSpec:
    return register(MethodSpec(name, summary, PAPER, MedGANConfig, MedGAN, defaults, sample_kind="2d",
                               make_sampler=make_whole_slice_sampler))


_NO_VGG = dict(lambda_style=0.0, lambda_content=0.0)
_ONE_BLOCK = dict(n_blocks=1)  # Sec. 3.2.1–3.2.2: ablations and baselines use a single U-block
# Sec. 3.2.2: every baseline is "a single U-block + patch discriminator" with MedGAN's settings, so
# pix2pix gets MedGAN's 16×16 D too; Isola et al.'s own 70×70 D is the variant pix2pix-70.
_PIX2PIX = dict(n_blocks=1, lambda_perceptual=0.0, lambda_l1=PIX2PIX_LAMBDA_L1, **_NO_VGG)

_spec("medgan", "MedGAN: CasNet (6 U-blocks) + 16×16 spectral-norm PatchGAN; L_cGAN + 20 L_perceptual + "
      "1e-4 (L_style + L_content); 3 G updates per D update (needs VGG-19 weights: params.vgg19_weights)")
_spec("medgan-noVGG", "MedGAN without the pre-trained VGG-19: CasNet (6 U-blocks), L_cGAN + 20 L_perceptual "
      "(no style/content losses); works without any weights file", **_NO_VGG)
# Table I (loss ablations): one U-block, 16×16 PatchGAN, same schedule
_spec("medgan-1g", "MedGAN-1G (Table I): all MedGAN losses with a single U-block generator", **_ONE_BLOCK)
_spec("medgan-cgan", "Table I ablation 'cGAN': single U-block, conditional adversarial loss only",
      lambda_perceptual=0.0, **_NO_VGG, **_ONE_BLOCK)
_spec("medgan-perceptual", "Table I ablation 'Perceptual': single U-block, L_cGAN + 20 L_perceptual",
      **_NO_VGG, **_ONE_BLOCK)
_spec("medgan-style-content", "Table I ablation 'Style-content': single U-block, L_cGAN + 1e-4 (L_style + "
      "L_content) (needs VGG-19 weights)", lambda_perceptual=0.0, **_ONE_BLOCK)
# Table II (baselines, Sec. 3.2.2): one U-block, MedGAN's training settings
_spec("pix2pix", "pix2pix baseline (Table II): U-net (one U-block) + MedGAN's 16×16 PatchGAN, L_cGAN + 100 L1",
      **_PIX2PIX)
_spec("pix2pix-70", "pix2pix with Isola et al.'s own 70×70 PatchGAN (one U-block, L_cGAN + 100 L1)",
      **{**_PIX2PIX, "d_layers": PIX2PIX_N_LAYERS})
_spec("pan", "PAN baseline: one U-block, L_cGAN + 20 × perceptual loss on D's hidden layers (no pixel term); "
      f"D keeps that distance above a margin m = {PAN_MARGIN:g}", n_blocks=1, perceptual_layers="hidden",
      pan_margin=PAN_MARGIN, **_NO_VGG)
_spec("id-cgan", "ID-CGAN baseline: one U-block, 6.6e-3 L_cGAN + L2 + VGG-19 content loss at relu2_2 "
      "(needs VGG-19 weights)", n_blocks=1, lambda_cgan=IDCGAN_LAMBDA_ADV, lambda_perceptual=0.0, lambda_l2=1.0,
      lambda_style=0.0, lambda_content=1.0, vgg_layers=[IDCGAN_VGG_LAYER], style_weights=[0.0],
      content_weights=[1.0])
_spec("fila-sgan", "Fila-sGAN baseline: one U-block, L_cGAN + 100 L1 + TV + 1e-4 VGG-19 style (of the source "
      "image) and content losses (needs VGG-19 weights)", n_blocks=1, lambda_perceptual=0.0,
      lambda_l1=PIX2PIX_LAMBDA_L1, lambda_tv=1.0, style_reference="source")
# Appendix A / Fig. 6: pix2pix with a CasNet of N U-blocks
for _n in range(1, MAX_BLOCKS + 1):
    _spec(f"pix2pix-casnet-{_n}", f"CasNet depth study (Fig. 6): pix2pix with a CasNet of {_n} U-block"
          + ("s" if _n > 1 else ""), **{**_PIX2PIX, "n_blocks": _n})
