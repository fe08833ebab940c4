"""PatchGAN discriminators: MedGAN's 16×16 (Sec. 2.4.3) and pix2pix's 70×70 (Isola et al. 2017).

One class, the pix2pix ``NLayerDiscriminator`` layout with ``n_layers`` stride-2 layers:

    conv 4×4 s2 (64)                      → LeakyReLU(0.2)          hidden layer 1
    conv 4×4 s2 (64·min(2^n, 8)), n < n_layers → norm → LeakyReLU   hidden layers 2..n_layers
    conv 4×4 s1 (64·min(2^n_layers, 8))   → norm → LeakyReLU        last hidden layer
    conv 4×4 s1 (1)                       → logits; D = sigmoid(logits)

* ``n_layers=1`` → 64, 128 filters, **16×16** receptive field: MedGAN's discriminator ("two
  convolutional layers with 64 and 128 spatial filters … then a convolution layer of output
  dimension 1 and a sigmoid"). The 128-filter layer has stride 1, as pix2pix's 16×16 PatchGAN:
  with two stride-2 layers the field would be 22×22, not the 16×16 the paper states.
* ``n_layers=3`` → 64, 128, 256, 512 filters, **70×70** receptive field: pix2pix's default
  (Isola et al. Sec. 6.1.2, "C64-C128-C256-C512").

Conditioning (cGAN, MedGAN Eq. 3): the input is ``concat(source y, image x)`` along channels;
``source_channels=0`` gives an unconditional discriminator.

Choices:

* **No normalisation on the first layer**, as pix2pix and DCGAN (the layer that reads the image
  keeps absolute intensities); the others use ``norm`` ("instance" by default, MedGAN Sec. 2.5).
* **Spectral normalisation on every convolution, the last one included** (MedGAN Eq. 8
  normalises "the weight matrix θ_D,i of each layer i"; Miyato et al. normalise every layer,
  the output layer included: only then is the whole network's Lipschitz constant bounded by
  1 — an unnormalised last layer could scale the logits freely and undo the constraint).
  ``spectral_norm_last=False`` leaves the output layer plain. One power iteration per training
  forward (torch's parametrisation; frozen in eval mode).
* Initialisation: weights ~ N(0, 0.02), biases 0 (pix2pix), applied before spectral norm.

Shapes and ranges: ``image`` (B, image_channels, H, W) and ``source`` (B, source_channels, H, W),
images in [-1, 1]. ``forward`` returns **logits** (B, 1, H', W') (use BCE-with-logits for a
numerically stable loss); :meth:`probability` returns D = sigmoid(logits) in (0, 1). For
H = W = 256: 126×126 (16×16 patches) or 30×30 (70×70 patches).

``forward(..., return_features=True)`` also returns the feature maps used by MedGAN's
perceptual loss (Eq. 6-7): ``[layer 0 = the raw discriminator input concat(y, x), hidden layer
1, …, hidden layer L]`` (post-activation; L = n_layers + 1, i.e. 2 for MedGAN's discriminator).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from medsyn.errors import ConfigError
from medsyn.models.generators.casnet import check_norm, norm_layer
from medsyn.models.registry import DISCRIMINATORS

#: MedGAN Sec. 2.4.3 (16×16 patches) and pix2pix (70×70 patches).
MEDGAN_N_LAYERS = 1
PIX2PIX_N_LAYERS = 3


def receptive_field(n_layers: int) -> int:
    """Receptive field (pixels) of one output logit: 16 for n_layers=1, 70 for 3."""
    r = 4  # output conv, stride 1
    r = r + 3  # last hidden conv, stride 1
    for _ in range(n_layers):
        r = (r - 1) * 2 + 4
    return r


@DISCRIMINATORS.register("patchgan")
class PatchGAN(nn.Module):
    """Conditional PatchGAN with spectral normalisation (MedGAN Sec. 2.2 Eq. 8, Sec. 2.4.3).

    Args:
        image_channels: channels of the real/translated image x.
        source_channels: channels of the source image y it is conditioned on (0 = unconditional).
        n_layers: stride-2 layers: 1 → 16×16 patches (MedGAN), 3 → 70×70 (pix2pix).
        base_channels: filters of the first layer (64).
        norm: "instance" (default), "batch" or "none"; never on the first layer.
        spectral_norm: spectral normalisation of the convolutions (MedGAN Eq. 8).
        spectral_norm_last: also on the output convolution (default, see module docstring).
    """

    def __init__(self, image_channels: int = 1, source_channels: int = 1, n_layers: int = MEDGAN_N_LAYERS,
                 base_channels: int = 64, norm: str = "instance", spectral_norm: bool = True,
                 spectral_norm_last: bool = True):
        super().__init__()
        if not isinstance(n_layers, int) or isinstance(n_layers, bool) or not 1 <= n_layers <= 6:
            raise ConfigError(f"n_layers: got {n_layers!r}, expected an integer 1-6 "
                              "(1 → 16×16 patches as MedGAN, 3 → 70×70 as pix2pix)")
        if image_channels < 1 or source_channels < 0 or base_channels < 1:
            raise ConfigError(f"image_channels ≥ 1, source_channels ≥ 0 and base_channels ≥ 1 expected, got "
                              f"{image_channels}/{source_channels}/{base_channels}")
        check_norm(norm)
        self.image_channels, self.source_channels, self.n_layers = image_channels, source_channels, n_layers
        bias = norm != "batch"

        def conv(cin: int, cout: int, stride: int, has_bias: bool = True) -> nn.Conv2d:
            c = nn.Conv2d(cin, cout, 4, stride=stride, padding=1, bias=has_bias)
            nn.init.normal_(c.weight, 0.0, 0.02)
            if c.bias is not None:
                nn.init.zeros_(c.bias)
            return c

        widths = [base_channels * min(2**n, 8) for n in range(n_layers + 1)]
        strides = [2] * n_layers + [1]
        self.hidden_channels = widths
        self.hidden = nn.ModuleList()
        prev = image_channels + source_channels
        for k, (ch, s) in enumerate(zip(widths, strides)):
            use_norm = k > 0
            c = conv(prev, ch, s, has_bias=bias or not use_norm)
            if spectral_norm:
                c = _spectral_norm(c)
            self.hidden.append(nn.Sequential(
                c, norm_layer(norm, ch) if use_norm else nn.Identity(), nn.LeakyReLU(0.2)))
            prev = ch
        out = conv(prev, 1, 1)
        self.out = _spectral_norm(out) if spectral_norm and spectral_norm_last else out
        if norm == "batch":
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    nn.init.normal_(m.weight, 1.0, 0.02)
                    nn.init.zeros_(m.bias)

    @property
    def receptive_field(self) -> int:
        return receptive_field(self.n_layers)

    def _input(self, image: torch.Tensor, source: torch.Tensor | None) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != self.image_channels:
            raise ValueError(f"PatchGAN expects image (B, {self.image_channels}, H, W), got {tuple(image.shape)}")
        if self.source_channels == 0:
            if source is not None:
                raise ValueError("this PatchGAN is unconditional (source_channels=0) but a source was given")
            return image
        if source is None:
            raise ValueError(f"this PatchGAN is conditioned on a {self.source_channels}-channel source; pass source=")
        if source.shape[1] != self.source_channels or source.shape[0] != image.shape[0] \
                or source.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"source {tuple(source.shape)} does not match image {tuple(image.shape)} "
                             f"with {self.source_channels} source channels")
        return torch.cat([source, image], dim=1)

    def forward(self, image: torch.Tensor, source: torch.Tensor | None = None, return_features: bool = False):
        """Logits (B, 1, H', W'); with ``return_features`` also ``[input, h_1, …, h_L]``.

        image: x or G(y), (B, image_channels, H, W) in [-1, 1]. source: y, (B, source_channels, H, W).
        """
        x = self._input(image, source)
        feats = [x]
        for layer in self.hidden:
            x = layer(x)
            feats.append(x)
        logits = self.out(x)
        return (logits, feats) if return_features else logits

    def probability(self, image: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """D(x, y) = sigmoid(logits): per-patch probability of "real", (B, 1, H', W') in (0, 1)."""
        return torch.sigmoid(self.forward(image, source))
