"""Networks of Qu et al., "Synthesis of Registered Multimodal MRI with Lesion Label" (Sec. 2.3–2.7).

The paper describes the networks by role only (Fig. 1–4); it gives no layer lists. The layers
here follow the authors' public TensorFlow code in spirit (3x3 convolutions, instance norm, leaky
ReLU, two stride-2 downsamplings, nearest-neighbour upsampling + convolution, a spatial latent
code, a one-hot modality code broadcast over the latent map) with sizes as arguments so tests can
use tiny ones. Choices are documented in ``docs/qu.md``.

Stage 1 — random structure maps (Sec. 2.3, Fig. 2):
    :class:`StructureEncoder` ``EC_f``: f -> (code_{f,mean}, code_{f,logvar});
    :func:`reparameterize`: code_f = mean + exp(0.5 logvar) * N(0, 1);
    :class:`StructureDecoder` ``DC_f``: code -> f_r / f_g (probabilities);
    :class:`StructureDiscriminator` ``D_f``; :class:`CodeDiscriminator` ``FD_f``;
    :class:`MaskGenerator` ``MASK``: f -> mask (Algorithm 2 convention, 1 outside the brain).
Stage 2 — modality reconstruction / translation (Sec. 2.4) and generation (Sec. 2.6):
    :class:`ModalityEncoder` ``EC``: x_i -> code_i;
    :class:`ModalityDecoder` ``DC``: (code, one-hot modality i) -> x_i, its instance norms
        modality-conditional (:class:`ConditionalInstanceNorm2d`);
    :class:`ModalityDiscriminator` ``D``: x -> (d real/fake map, c modality-class map);
    :class:`FusionEncoder`: fused structure+label map -> code_g;
    :class:`MultimodalGenerator`: fused map -> (code_g, [x_{g,0}, ..., x_{g,n-1}]).
Lesion supervision (Sec. 2.7, Table 1): :class:`OneSegmenter` (1SEG),
    :class:`SharedEncoderSegmenter` (1ECL+4DCL), :class:`PerModalitySegmenter` (4SEG);
    :func:`build_lesion_segmenter` by name.

Initialisation (Sec. 3.1): every generator-side convolution starts as a mean filter
(:func:`init_mean_filter`), every discriminator convolution as N(0, 0.2^2)
(:func:`init_discriminator`); every network has dropout 0.1 on its input. Constructors apply
both, so a freshly built network is initialised as in the paper.

Tensor layout: images ``(B, 1, H, W)``, H and W divisible by ``2 ** n_down``; latent codes
``(B, code_channels, H / 2**n_down, W / 2**n_down)``; generated images and masks are in [0, 1]
(sigmoid), matching slices scaled to [0, 1] with the background at 0 (Algorithm 2's ``x > 0``).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsyn.registry import Registry

#: Dropout rate on every network's input layer (Sec. 3.1: "0.1 Dropout on the input layer").
INPUT_DROPOUT = 0.1
#: Discriminator weights ~ N(0, std^2), bias 0 (Sec. 3.1: "zero mean and *standard deviation*
#: 0.2"). The authors' code uses 0.02 (the DCGAN value); pass ``std=0.02`` to reproduce it.
DISCRIMINATOR_INIT_STD = 0.2
#: Std of the random-normal initializer centred on the mean-filter value (Sec. 3.1 says a
#: "random normal initializer" sets every weight to 1/(k*k*f); the authors' code uses std 1e-6).
#: Exactly equal weights would keep every channel of a layer identical for ever (identical
#: gradients), so a tiny jitter is kept; ``std=0`` gives the exact mean filter.
MEAN_FILTER_JITTER_STD = 1e-6
LEAKY_SLOPE = 0.2

OutActivation = Literal["sigmoid", "softmax", "tanh", "none"]


# --------------------------------------------------------------------------- initialisation


@torch.no_grad()
def init_mean_filter(
    module: nn.Module, std: float = MEAN_FILTER_JITTER_STD, generator: torch.Generator | None = None
) -> nn.Module:
    """Sec. 3.1 generator initialisation: every ``nn.Conv2d`` becomes a mean filter.

    For a convolution with kernel ``[k, k, f]`` (f = input channels per group) every one of the
    ``k*k*f`` weights is set to ``1 / (k*k*f)`` and the bias to 0, so each output channel starts
    as the local mean over all input channels: a constant image maps to the same constant
    (with reflect padding, also at the border). ``std > 0`` adds N(0, std^2) jitter (see
    :data:`MEAN_FILTER_JITTER_STD`). Instance-norm affine parameters are reset to (1, 0).

    Returns ``module`` (initialised in place).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            fan = kh * kw * (m.in_channels // m.groups)
            m.weight.fill_(1.0 / fan)
            if std > 0:
                m.weight.add_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()
    return module


@torch.no_grad()
def init_discriminator(
    module: nn.Module, std: float = DISCRIMINATOR_INIT_STD, generator: torch.Generator | None = None
) -> nn.Module:
    """Sec. 3.1 discriminator initialisation: weights ~ N(0, std^2), bias 0.

    Applies to every ``nn.Conv2d`` and ``nn.Linear``. The paper states 0.2 as the *standard
    deviation* ("0均值和标准差为0.2"), so ``std=0.2`` (variance 0.04). Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator, dtype=m.weight.dtype) * std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()
    return module


# --------------------------------------------------------------------------- building blocks


def conv_block(in_ch: int, out_ch: int, stride: int = 1, norm: bool = True) -> nn.Sequential:
    """3x3 conv (reflect padding) -> InstanceNorm(affine) (if ``norm``) -> LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, padding_mode="reflect")]
    if norm:
        layers.append(nn.InstanceNorm2d(out_ch, affine=True))
    layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


def _activation(name: OutActivation) -> nn.Module:
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "softmax":
        return nn.Softmax(dim=1)
    if name == "tanh":
        return nn.Tanh()
    if name == "none":
        return nn.Identity()
    raise ValueError(f"out_activation: expected 'sigmoid', 'softmax', 'tanh' or 'none', got {name!r}")


def _check_divisible(x: torch.Tensor, n_down: int, name: str) -> None:
    k = 2**n_down
    if x.ndim != 4 or x.shape[-1] % k or x.shape[-2] % k:
        raise ValueError(
            f"{name}: expected (B, C, H, W) with H and W divisible by {k} (n_down={n_down}), "
            f"got {tuple(x.shape)}"
        )


class QuEncoder(nn.Module):
    """Convolutional encoder: ``(B, in_channels, H, W)`` -> ``(B, code_channels, H/2^n, W/2^n)``.

    input dropout -> 2 conv blocks at ``base_channels`` -> ``n_down`` x (stride-2 conv block
    doubling the channels + conv block) -> conv block to ``code_channels``.
    """

    def __init__(
        self,
        in_channels: int,
        code_channels: int,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.n_down = n_down
        layers: list[nn.Module] = [nn.Dropout(input_dropout)]
        layers += [conv_block(in_channels, base_channels), conv_block(base_channels, base_channels)]
        ch = base_channels
        for _ in range(n_down):
            layers += [conv_block(ch, 2 * ch, stride=2), conv_block(2 * ch, 2 * ch)]
            ch *= 2
        self.trunk = nn.Sequential(*layers)
        self.trunk_channels = ch
        self.head = conv_block(ch, code_channels)
        init_mean_filter(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_divisible(x, self.n_down, type(self).__name__)
        return self.head(self.trunk(x))


class QuDecoder(nn.Module):
    """Decoder: ``(B, in_channels, h, w)`` -> ``(B, out_channels, h*2^n, w*2^n)``.

    input dropout -> conv block at ``base * 2^n_up`` -> ``n_up`` x (nearest x2 upsampling +
    conv block halving the channels + conv block) -> 3x3 conv to ``out_channels`` -> output
    activation. Nearest upsampling + convolution (as the authors' code) rather than transposed
    convolutions: no checkerboard, and a constant input stays constant.

    ``first_norm=False`` drops the instance norm of the first block. A decoder whose input
    carries a spatially constant condition map needs it: the condition adds a per-channel
    constant after the first convolution, which instance norm would subtract again.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 1,
        base_channels: int = 64,
        n_up: int = 2,
        out_activation: OutActivation = "sigmoid",
        input_dropout: float = INPUT_DROPOUT,
        first_norm: bool = True,
    ):
        super().__init__()
        ch = base_channels * 2**n_up
        layers: list[nn.Module] = [nn.Dropout(input_dropout), conv_block(in_channels, ch, norm=first_norm)]
        for _ in range(n_up):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv_block(ch, ch // 2),
                conv_block(ch // 2, ch // 2),
            ]
            ch //= 2
        layers += [nn.Conv2d(ch, out_channels, 3, padding=1, padding_mode="reflect"), _activation(out_activation)]
        self.net = nn.Sequential(*layers)
        init_mean_filter(self)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


class PatchDiscriminator(nn.Module):
    """Least-squares patch discriminator trunk + 1 or 2 heads (no sigmoid: LSGAN outputs).

    input dropout -> 4x4 stride-2 conv + LeakyReLU -> (n_layers - 1) x [4x4 stride-2 conv +
    InstanceNorm + LeakyReLU] -> per head a 3x3 conv to ``head_channels``. Output maps are
    ``(B, c, H / 2^n_layers, W / 2^n_layers)``.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 64,
        n_layers: int = 3,
        head_channels: Sequence[int] = (1,),
        input_dropout: float = INPUT_DROPOUT,
        init_std: float = DISCRIMINATOR_INIT_STD,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(input_dropout)]
        ch_in, ch = in_channels, base_channels
        for k in range(n_layers):
            layers.append(nn.Conv2d(ch_in, ch, 4, stride=2, padding=1))
            if k > 0:
                layers.append(nn.InstanceNorm2d(ch, affine=True))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
            ch_in, ch = ch, min(2 * ch, 8 * base_channels)
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Conv2d(ch_in, c, 3, padding=1) for c in head_channels)
        init_discriminator(self, init_std)

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.trunk(x)
        return [head(h) for head in self.heads]


# --------------------------------------------------------------------------- Sec. 2.3


class StructureEncoder(nn.Module):
    """``EC_f``: structure map ``(B, 1, H, W)`` -> ``(code_{f,mean}, code_{f,logvar})``, each
    ``(B, code_channels, H/2^n, W/2^n)`` (Sec. 2.3: "a mean matrix and a variance matrix")."""

    def __init__(
        self,
        code_channels: int = 4,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.backbone = QuEncoder(1, base_channels * 2**n_down, base_channels, n_down, input_dropout)
        ch = base_channels * 2**n_down
        self.mean = nn.Conv2d(ch, code_channels, 3, padding=1, padding_mode="reflect")
        self.logvar = nn.Conv2d(ch, code_channels, 3, padding=1, padding_mode="reflect")
        init_mean_filter(self)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(f)
        return self.mean(h), self.logvar(h)


def reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """``code_f = code_{f,mean} + exp(0.5 * code_{f,logvar}) * eps``, eps ~ N(0, 1) (Sec. 2.3:
    the mean and variance matrices are "fused with a random normal matrix"). ``noise`` fixes eps."""
    eps = torch.randn_like(mean) if noise is None else noise
    return mean + torch.exp(0.5 * logvar) * eps


class StructureDecoder(QuDecoder):
    """``DC_f``: latent code ``(B, code_channels, h, w)`` -> structure map ``(B, 1, H, W)`` in (0, 1).

    The output is the probability of "structure" per pixel (sigmoid) so the losses have a
    gradient; threshold at 0.5 (or a straight-through estimator) for a binary map.
    """

    def __init__(
        self,
        code_channels: int = 4,
        base_channels: int = 64,
        n_up: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__(code_channels, 1, base_channels, n_up, "sigmoid", input_dropout)


class MaskGenerator(nn.Module):
    """``MASK``: structure map ``(B, 1, H, W)`` -> brain mask ``(B, 1, H, W)`` in (0, 1).

    Trained against Algorithm 2's mask, so its output follows that convention: **1 outside the
    brain, 0 inside** (Sec. 2.3, ``loss_mask``).
    """

    def __init__(
        self,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.encoder = QuEncoder(1, code_channels, base_channels, n_down, input_dropout)
        self.decoder = QuDecoder(code_channels, 1, base_channels, n_down, "sigmoid", input_dropout=0.0)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(f))


class StructureDiscriminator(PatchDiscriminator):
    """``D_f``: structure map ``(B, 1, H, W)`` -> real/fake patch map ``(B, 1, H/2^n, W/2^n)``."""

    def __init__(
        self,
        base_channels: int = 64,
        n_layers: int = 3,
        input_dropout: float = INPUT_DROPOUT,
        init_std: float = DISCRIMINATOR_INIT_STD,
    ):
        super().__init__(1, base_channels, n_layers, (1,), input_dropout, init_std)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(f)[0]


class CodeDiscriminator(nn.Module):
    """``FD_f``: latent code ``(B, code_channels, h, w)`` -> real/fake map ``(B, 1, h, w)``.

    N(0, 1) samples ``code_{f,g}`` are its "real" class, encoded maps ``code_f`` its "fake"
    class (Sec. 2.3). The code is already small, so no downsampling: ``n_layers`` 3x3 conv +
    LeakyReLU layers and a 3x3 conv to one channel.
    """

    def __init__(
        self,
        code_channels: int = 4,
        base_channels: int = 64,
        n_layers: int = 3,
        input_dropout: float = INPUT_DROPOUT,
        init_std: float = DISCRIMINATOR_INIT_STD,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(input_dropout)]
        ch_in = code_channels
        for _ in range(n_layers):
            layers += [nn.Conv2d(ch_in, base_channels, 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            ch_in = base_channels
        layers.append(nn.Conv2d(ch_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        init_discriminator(self, init_std)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


# --------------------------------------------------------------------------- Sec. 2.4–2.6


class ModalityEncoder(QuEncoder):
    """``EC``: MRI slice ``(B, 1, H, W)`` -> semantic code ``(B, code_channels, H/2^n, W/2^n)``."""

    def __init__(
        self,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__(1, code_channels, base_channels, n_down, input_dropout)


class FusionEncoder(QuEncoder):
    """Encoder of the fused structure + label map (Sec. 2.6: "a separate encoder").

    ``(B, n_label_classes, H, W)`` (see ``medsyn.data.structure.fuse_label_structure``) ->
    ``code_g`` ``(B, code_channels, H/2^n, W/2^n)``, the same code space as :class:`ModalityEncoder`.
    """

    def __init__(
        self,
        n_label_classes: int,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__(n_label_classes, code_channels, base_channels, n_down, input_dropout)


def modality_index(
    modality: int | torch.Tensor, n_modalities: int, like: torch.Tensor
) -> torch.Tensor:
    """The modality of every batch element as a ``(B,)`` long tensor on ``like``'s device.

    ``modality`` is an int (same for the batch) or a ``(B,)`` integer tensor.
    """
    b = like.shape[0]
    if isinstance(modality, int):
        if not 0 <= modality < n_modalities:
            raise ValueError(f"modality: expected 0..{n_modalities - 1}, got {modality}")
        return torch.full((b,), modality, dtype=torch.long, device=like.device)
    idx = modality.to(device=like.device, dtype=torch.long).reshape(-1)
    if idx.numel() != b:
        raise ValueError(f"modality: expected {b} indices, got {idx.numel()}")
    if idx.min() < 0 or idx.max() >= n_modalities:
        raise ValueError(f"modality: expected indices in 0..{n_modalities - 1}, got {idx.tolist()}")
    return idx


def modality_code(
    modality: int | torch.Tensor, n_modalities: int, like: torch.Tensor
) -> torch.Tensor:
    """One-hot modality condition broadcast over the code grid: ``(B, n_modalities, h, w)``.

    ``modality`` is an int (same for the batch) or a ``(B,)`` integer tensor.
    """
    b, _, h, w = like.shape
    idx = modality_index(modality, n_modalities, like)
    onehot = F.one_hot(idx, n_modalities).to(like.dtype)
    return onehot[:, :, None, None].expand(b, n_modalities, h, w)


class ConditionalInstanceNorm2d(nn.InstanceNorm2d):
    """Instance norm with a per-modality affine on top (conditional instance normalisation,
    Dumoulin et al., ICLR 2017): ``y = (IN(x) * weight + bias) * modality_scale[i] + modality_shift[i]``.

    ``weight``/``bias`` are the shared affine of :class:`nn.InstanceNorm2d` (same state-dict
    keys); ``modality_scale``/``modality_shift`` ``(n_modalities, C)`` start at 1 and 0, so a new
    layer equals a plain affine instance norm. A state dict without them (saved before they
    existed) loads with them at that identity value. ``forward(x)`` without a modality skips them.
    """

    def __init__(self, num_features: int, n_modalities: int):
        super().__init__(num_features, affine=True)
        self.n_modalities = n_modalities
        self.modality_scale = nn.Parameter(torch.ones(n_modalities, num_features))
        self.modality_shift = nn.Parameter(torch.zeros(n_modalities, num_features))

    def forward(self, x: torch.Tensor, modality: torch.Tensor | None = None) -> torch.Tensor:
        y = super().forward(x)
        if modality is None:
            return y
        return y * self.modality_scale[modality][:, :, None, None] + self.modality_shift[modality][:, :, None, None]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name, fill in (("modality_scale", 1.0), ("modality_shift", 0.0)):
            if prefix + name not in state_dict and prefix + "weight" in state_dict:  # an older checkpoint
                state_dict[prefix + name] = torch.full_like(getattr(self, name), fill)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class ModalityDecoder(nn.Module):
    """``DC``: (code ``(B, code_channels, h, w)``, modality i) -> MRI slice ``(B, 1, H, W)`` in (0, 1).

    The code is concatenated with the one-hot condition vector of modality i broadcast over the
    code grid (Sec. 2.4: "connected with different condition vectors"); channel layout
    ``[code (code_channels) | one-hot (n_modalities)]``. Input dropout acts on the code only,
    never on the condition. The first block has no instance norm, which would erase the
    condition (see :class:`QuDecoder`).

    The concatenated condition alone is not enough: after the first convolution it is a
    per-channel constant, and where the first block's pre-activations keep one sign the
    LeakyReLU is linear and the next instance norm subtracts it, so every modality decoded to
    the same image. Every instance norm of the decoder is therefore a
    :class:`ConditionalInstanceNorm2d` with a per-modality scale and shift applied *after* the
    normalisation, where no later norm can cancel it (the last one feeds the output convolution
    directly). They start at (1, 0), so a new decoder computes exactly what the
    concatenation-only decoder computed with the same seed, and older state dicts load with
    them at that identity value. Under the mean-filter initialisation every input channel has
    the same weight and the one-hot channels sum to 1, so at initialisation the output does not
    depend on the modality; training (the modality losses differ per modality, and so do the
    gradients of each modality's scale and shift) separates them.
    """

    def __init__(
        self,
        n_modalities: int,
        code_channels: int = 64,
        base_channels: int = 64,
        n_up: int = 2,
        out_activation: OutActivation = "sigmoid",
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.n_modalities = n_modalities
        self.dropout = nn.Dropout(input_dropout)
        self.decoder = QuDecoder(
            code_channels + n_modalities, 1, base_channels, n_up, out_activation, input_dropout=0.0, first_norm=False
        )
        # every instance norm -> conditional instance norm (identity per-modality affine; no RNG
        # is drawn, so the convolutions' initial weights are those of the plain decoder)
        for block in self.decoder.net:
            if isinstance(block, nn.Sequential):
                for k, m in enumerate(block):
                    if isinstance(m, nn.InstanceNorm2d):
                        block[k] = ConditionalInstanceNorm2d(m.num_features, n_modalities)

    def forward(self, code: torch.Tensor, modality: int | torch.Tensor) -> torch.Tensor:
        idx = modality_index(modality, self.n_modalities, code)
        cond = modality_code(idx, self.n_modalities, code)
        x = torch.cat([self.dropout(code), cond], dim=1)
        for layer in self.decoder.net:
            for m in layer if isinstance(layer, nn.Sequential) else (layer,):
                x = m(x, idx) if isinstance(m, ConditionalInstanceNorm2d) else m(x)
        return x


class ModalityDiscriminator(PatchDiscriminator):
    """``D``: MRI slice ``(B, 1, H, W)`` -> ``(d, c)``, both ``(B, ., H/2^n, W/2^n)`` maps.

    ``d`` is the least-squares real/fake output. ``c`` is the modality-class output; with
    ``class_channels=1`` (default, as the authors' code) it is regressed onto the modality index
    ``i`` (``||c - i||^2``, Sec. 2.4/2.6); with ``class_channels=n_modalities`` the class losses
    regress it onto the one-hot vector of ``i`` instead.
    """

    def __init__(
        self,
        base_channels: int = 64,
        n_layers: int = 3,
        class_channels: int = 1,
        input_dropout: float = INPUT_DROPOUT,
        init_std: float = DISCRIMINATOR_INIT_STD,
    ):
        super().__init__(1, base_channels, n_layers, (1, class_channels), input_dropout, init_std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, c = self.forward_heads(x)
        return d, c


class MultimodalGenerator(nn.Module):
    """The multimodal generator of Sec. 2.6 (Fig. 4): fused map -> every modality.

    ``fused`` ``(B, n_label_classes, H, W)`` -> :class:`FusionEncoder` -> ``code_g`` ->
    the shared :class:`ModalityDecoder` once per modality condition. The decoder is the same
    module as in the reconstruction/translation stage (Sec. 2.4); pass it in to share it.

    ``forward`` returns ``(code_g, [x_{g,0}, ..., x_{g,n-1}])``, each ``x_{g,i}`` ``(B, 1, H, W)``.
    """

    def __init__(self, fusion_encoder: FusionEncoder, decoder: ModalityDecoder):
        super().__init__()
        self.encoder = fusion_encoder
        self.decoder = decoder

    @property
    def n_modalities(self) -> int:
        return self.decoder.n_modalities

    def forward(self, fused: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        code_g = self.encoder(fused)
        return code_g, [self.decoder(code_g, i) for i in range(self.n_modalities)]


# --------------------------------------------------------------------------- Sec. 2.7


class LesionSegmenter(nn.Module):
    """One segmenter: MRI ``(B, 1, H, W)`` -> lesion class probabilities ``(B, n_classes, H, W)`` (softmax)."""

    def __init__(
        self,
        n_classes: int,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.encoder = QuEncoder(1, code_channels, base_channels, n_down, input_dropout)
        self.decoder = QuDecoder(code_channels, n_classes, base_channels, n_down, "softmax", input_dropout=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class OneSegmenter(nn.Module):
    """1SEG (Table 1): one shared segmenter for every modality. ``forward(x, modality)``."""

    def __init__(
        self,
        n_modalities: int,
        n_classes: int,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.n_modalities = n_modalities
        self.segmenter = LesionSegmenter(n_classes, code_channels, base_channels, n_down, input_dropout)

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        _check_modality(modality, self.n_modalities)
        return self.segmenter(x)


class SharedEncoderSegmenter(nn.Module):
    """1ECL+4DCL (Table 1): one shared lesion encoder, one lesion decoder per modality."""

    def __init__(
        self,
        n_modalities: int,
        n_classes: int,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.n_modalities = n_modalities
        self.encoder = QuEncoder(1, code_channels, base_channels, n_down, input_dropout)
        self.decoders = nn.ModuleList(
            QuDecoder(code_channels, n_classes, base_channels, n_down, "softmax", input_dropout=0.0)
            for _ in range(n_modalities)
        )

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        _check_modality(modality, self.n_modalities)
        return self.decoders[modality](self.encoder(x))


class PerModalitySegmenter(nn.Module):
    """4SEG (Table 1, best Dice 0.838): an independent segmenter per modality."""

    def __init__(
        self,
        n_modalities: int,
        n_classes: int,
        code_channels: int = 64,
        base_channels: int = 64,
        n_down: int = 2,
        input_dropout: float = INPUT_DROPOUT,
    ):
        super().__init__()
        self.n_modalities = n_modalities
        self.segmenters = nn.ModuleList(
            LesionSegmenter(n_classes, code_channels, base_channels, n_down, input_dropout) for _ in range(n_modalities)
        )

    def forward(self, x: torch.Tensor, modality: int) -> torch.Tensor:
        _check_modality(modality, self.n_modalities)
        return self.segmenters[modality](x)


def _check_modality(modality: int, n_modalities: int) -> None:
    if not isinstance(modality, int) or not 0 <= modality < n_modalities:
        raise ValueError(f"modality: expected an int in 0..{n_modalities - 1}, got {modality!r}")


#: Lesion-supervision variants of Table 1 by the paper's names.
LESION_SEGMENTERS: Registry = Registry("lesion segmenter variant")
LESION_SEGMENTERS.add("1SEG", OneSegmenter)
LESION_SEGMENTERS.add("1ECL+4DCL", SharedEncoderSegmenter)
LESION_SEGMENTERS.add("4SEG", PerModalitySegmenter)


def build_lesion_segmenter(
    variant: str,
    n_modalities: int,
    n_classes: int,
    *,
    code_channels: int = 64,
    base_channels: int = 64,
    n_down: int = 2,
    input_dropout: float = INPUT_DROPOUT,
) -> nn.Module:
    """Build a Table 1 variant by name: ``"1SEG"``, ``"1ECL+4DCL"`` or ``"4SEG"``.

    Unknown names raise ``ConfigError`` listing the known ones. Every variant is called as
    ``seg(x, modality) -> (B, n_classes, H, W)`` probabilities.
    """
    cls = LESION_SEGMENTERS.get(variant, key="lesion_segmenter")
    return cls(n_modalities, n_classes, code_channels, base_channels, n_down, input_dropout)
