"""MedGAN's generator: U-blocks and CasNet (Armanious et al., MedGAN, Sec. 2.4.1-2.4.2).

A **U-block** is the pix2pix U-net generator (Isola et al. 2017, Sec. 6.1.1) for 256×256 images:

* encoder: ``depth`` (8) convolutions, 4×4, stride 2, padding 1, with 64, 128, 256, 512, 512,
  512, 512, 512 filters (``base_channels`` × min(2^k, 8)), each followed by normalisation and
  LeakyReLU(0.2). 256 → 128 → … → 1 pixel at the bottleneck.
* decoder: ``depth`` fractionally strided (transposed) convolutions, 4×4, stride 2, padding 1,
  each followed by normalisation and ReLU, the last one by Tanh. The output of decoder layer i
  is concatenated with the mirrored encoder output, so the decoder layers *read*
  512, 1024, 1024, 1024, 1024, 512, 256, 128 channels and *write* 512, 512, 512, 512, 256, 128,
  64 and ``out_channels``.

Choices (the paper leaves them open or contradicts its own reference):

* **No normalisation on the first encoder layer**, as pix2pix ("BatchNorm is not applied to the
  first C64 layer", Isola et al. 6.1.1) and DCGAN's guideline [25] (no normalisation on the
  layer that reads the image, so absolute intensities survive), although MedGAN's text says
  "each followed by batch normalization".
* **No normalisation on the bottleneck** (the deepest encoder layer), as the pix2pix code
  (its ``innermost`` block): at 256×256 that layer is 1×1 pixel, where instance normalisation
  returns exactly zero and batch normalisation with batch size 1 is undefined.
* **No normalisation on the last decoder layer** (Tanh output), as pix2pix.
* MedGAN Sec. 2.4.1 lists the decoder widths as "512, 1024, 1024, 1024, 512, 256 and 128": one
  1024 fewer than an 8-level mirrored U-net has. We follow pix2pix ("CD512-CD1024-CD1024-C1024-
  C1024-C512-C256-C128"), which MedGAN says it follows; :attr:`UBlock.decoder_in_channels`
  pins the widths.
* Normalisation: ``"instance"`` by default (MedGAN Sec. 2.5: instance normalisation, batch size
  1), non-affine with no running statistics as pix2pix; ``"batch"`` or ``"none"`` on request.
  Convolutions carry a bias unless followed by batch normalisation (as pix2pix).
* Dropout: ``dropout`` > 0 adds ``nn.Dropout(dropout)`` after the first three decoder layers
  (pix2pix's "CD" layers; 0.5 there). Off by default: MedGAN Sec. 2.4.1 wants no stochasticity.
* Initialisation: weights ~ N(0, 0.02), normalisation scales ~ N(1, 0.02), biases 0 (pix2pix).

A **CasNet** chains N U-blocks end to end (Sec. 2.4.2, Fig. 2): the output image of block k
is the input of block k + 1; the whole chain is trained as one network. N = 6 in MedGAN;
pix2pix's generator is a CasNet with one block.

Shapes and ranges: input (B, C_in, H, W), any real values (medsyn feeds images scaled to
[-1, 1]); output (B, C_out, H, W) in (-1, 1) (Tanh). H and W must be divisible by 2^depth
(256 for the paper's depth 8); use a smaller ``depth`` for small images (5 for 32×32).
"""

from __future__ import annotations

import torch
from torch import nn

from medsyn.errors import ConfigError
from medsyn.models.registry import GENERATORS

NORMS = ("instance", "batch", "none")
MAX_DEPTH = 8
MAX_BLOCKS = 7  # MedGAN Appendix A studies 1 to 7 U-blocks


def check_norm(norm: str, key: str = "norm") -> str:
    if norm not in NORMS:
        raise ConfigError(f"{key}: got {norm!r}, expected one of {', '.join(NORMS)}")
    return norm


def norm_layer(norm: str, channels: int) -> nn.Module:
    """pix2pix's normalisation: affine BatchNorm, or InstanceNorm without affine/running stats."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def init_pix2pix_(module: nn.Module, std: float = 0.02) -> None:
    """pix2pix's "normal" initialisation: conv weights N(0, std), norm scales N(1, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def encoder_channels(depth: int = MAX_DEPTH, base_channels: int = 64) -> list[int]:
    """Filters of the encoder convolutions: 64, 128, 256, 512, 512, 512, 512, 512 for depth 8."""
    return [base_channels * min(2**k, 8) for k in range(depth)]


@GENERATORS.register("ublock")
class UBlock(nn.Module):
    """One U-block: the pix2pix 256×256 U-net (MedGAN Sec. 2.4.1).

    Args:
        in_channels: channels of the input image (source modality).
        out_channels: channels of the output image.
        depth: number of stride-2 levels (8 in the paper, for 256×256); H, W divisible by 2^depth.
        base_channels: filters of the first encoder layer (64 in the paper).
        norm: "instance" (default, MedGAN Sec. 2.5), "batch" or "none".
        dropout: dropout probability after the first three decoder layers (0 = off, pix2pix 0.5).

    forward: (B, in_channels, H, W) → (B, out_channels, H, W) in (-1, 1).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, depth: int = MAX_DEPTH,
                 base_channels: int = 64, norm: str = "instance", dropout: float = 0.0):
        super().__init__()
        if not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ConfigError(f"depth: got {depth!r}, expected an integer 1-{MAX_DEPTH} (8 for 256×256 images)")
        if in_channels < 1 or out_channels < 1 or base_channels < 1:
            raise ConfigError(f"in_channels/out_channels/base_channels must be ≥ 1, got "
                              f"{in_channels}/{out_channels}/{base_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout: got {dropout}, expected 0 ≤ p < 1 (pix2pix uses 0.5; 0 = off)")
        check_norm(norm)
        self.in_channels, self.out_channels, self.depth = in_channels, out_channels, depth
        bias = norm != "batch"
        enc = encoder_channels(depth, base_channels)
        self.encoder_out_channels = enc

        self.down = nn.ModuleList()
        prev = in_channels
        for k, ch in enumerate(enc):
            use_norm = 0 < k < depth - 1  # not on the first layer, not on the 1×1 bottleneck
            self.down.append(nn.Sequential(
                nn.Conv2d(prev, ch, 4, stride=2, padding=1, bias=bias or not use_norm),
                norm_layer(norm, ch) if use_norm else nn.Identity(),
                nn.LeakyReLU(0.2),
            ))
            prev = ch

        self.up = nn.ModuleList()
        self.decoder_in_channels: list[int] = []
        for i in range(depth):  # decoder layer i mirrors encoder layer depth-1-i
            cin = enc[-1] if i == 0 else 2 * enc[depth - 1 - i]
            self.decoder_in_channels.append(cin)
            if i == depth - 1:
                self.up.append(nn.Sequential(
                    nn.ConvTranspose2d(cin, out_channels, 4, stride=2, padding=1, bias=True), nn.Tanh()))
            else:
                cout = enc[depth - 2 - i]
                layers: list[nn.Module] = [
                    nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=bias),
                    norm_layer(norm, cout),
                ]
                if dropout > 0 and i < 3:
                    layers.append(nn.Dropout(dropout))
                layers.append(nn.ReLU())
                self.up.append(nn.Sequential(*layers))
        self.decoder_out_channels = [enc[depth - 2 - i] for i in range(depth - 1)] + [out_channels]
        init_pix2pix_(self)

    @property
    def min_size(self) -> int:
        """Image sides must be multiples of this (2^depth)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_out, H, W) in (-1, 1); H, W multiples of 2^depth."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UBlock expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.min_size or w % self.min_size:
            raise ValueError(
                f"UBlock of depth {self.depth} needs H and W divisible by {self.min_size}, got {h}×{w}; "
                f"crop/pad the images (256×256 in MedGAN) or lower the depth")
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        x = skips.pop()  # bottleneck
        for i, layer in enumerate(self.up):
            x = layer(x)
            if i < self.depth - 1:
                x = torch.cat([x, skips.pop()], dim=1)
        return x


@GENERATORS.register("casnet")
class CasNet(nn.Module):
    """N U-blocks in series, trained end to end (MedGAN Sec. 2.4.2, Fig. 2).

    Block 1 reads ``in_channels``; blocks 2..N read the previous block's ``out_channels``-channel
    image. ``n_blocks=6`` is MedGAN; ``n_blocks=1`` is the pix2pix generator. Other arguments go
    to every :class:`UBlock`.

    forward: (B, in_channels, H, W) → (B, out_channels, H, W) in (-1, 1);
    ``return_intermediate=True`` also returns every block's output (list of N tensors).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, n_blocks: int = 6,
                 depth: int = MAX_DEPTH, base_channels: int = 64, norm: str = "instance",
                 dropout: float = 0.0):
        super().__init__()
        if not isinstance(n_blocks, int) or isinstance(n_blocks, bool) or not 1 <= n_blocks <= MAX_BLOCKS:
            raise ConfigError(
                f"n_blocks: got {n_blocks!r}, expected an integer 1-{MAX_BLOCKS} "
                "(MedGAN uses 6 U-blocks; 1 is the pix2pix generator)")
        self.n_blocks = n_blocks
        self.blocks = nn.ModuleList(
            UBlock(in_channels if k == 0 else out_channels, out_channels, depth=depth,
                   base_channels=base_channels, norm=norm, dropout=dropout)
            for k in range(n_blocks)
        )

    def forward(self, x: torch.Tensor, return_intermediate: bool = False):
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return (x, outputs) if return_intermediate else x
