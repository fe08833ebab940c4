"""Qu et al., "Synthesis of Registered Multimodal MRI with Lesion Label" (papers/001): the training steps.

The paper's pipeline (Sec. 2.1, Fig. 1) is trained stage by stage; each stage is a method here,
run by the shared training engine into ``RUN/stages/<stage>/`` of one pipeline run folder
(:mod:`medsyn.pipelines.qu` runs them in order; ``qu-pipeline`` is the registered entry):

* ``qu-structure`` (Sec. 2.3, Fig. 2) — random structure maps: ``EC_f``, ``DC_f``, ``D_f``,
  ``FD_f`` and the mask generator ``MASK``.
* ``qu-assist`` (Sec. 2.4, Fig. 3) — auxiliary modality reconstruction / translation on real
  slices: modality encoder ``EC``, conditional decoder ``DC``, discriminator ``D`` (real/fake +
  modality class) and the lesion-supervision component ``SEG`` (Table 1: 1SEG, 1ECL+4DCL, 4SEG).
* ``qu-generation`` (Sec. 2.5–2.7, Fig. 4) — multimodal generation from a fused structure map +
  lesion label: the fusion encoder ``FE`` with the assist stage's ``EC``/``DC``/``D``/``SEG``,
  trained together with the Sec. 2.4 losses ("同步", synchronous).
* ``qu-segmenter`` (Sec. 2.8–2.9) — a lesion segmenter trained on real slices, used to filter
  synthetic cases (Dice ≥ 0.95) and as the model of the segmentation experiments.

Samples are whole slices, batch 1 (Sec. 3.1), standardised per image into [0, 1] with a zero
background (medsyn.data.qu_slices). Every paper hyper-parameter is a named default of
:class:`QuConfig`; docs/qu.md lists the choices the paper leaves open.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsyn.config import Bound
from medsyn.data.qu_slices import (
    DEFAULT_STANDARDIZE_CLIP,
    PAPER_SLICE_RANGE_MM,
    QuSliceSampler,
    QuSlices,
    check_slice_size,
    load_slices,
)
from medsyn.data.structure import (
    DEFAULT_BETA,
    DEFAULT_FILTER_MAE,
    DEFAULT_MASK_PADDING,
    extract_mask_torch,
    fuse_label_structure_torch,
    one_hot_label_torch,
    structural_feature_map_torch,
)
from medsyn.data.layouts import canonical_modality
from medsyn.errors import ConfigError, DatasetError
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
from medsyn.methods.base import Batch, Method, MethodSpec, frozen, register
from medsyn.models.qu import (
    CodeDiscriminator,
    FusionEncoder,
    MaskGenerator,
    ModalityDecoder,
    ModalityDiscriminator,
    ModalityEncoder,
    StructureDecoder,
    StructureDiscriminator,
    StructureEncoder,
    build_lesion_segmenter,
    reparameterize,
)

PAPER = "Qu, Su, Deng, Wang, Lu, Xiao, Chen: Synthesis of Registered Multimodal MRI with Lesion Label (Sun Yat-sen University)"

#: the pipeline's stages in training order; each is the method ``qu-<stage>``
STAGES = ("structure", "assist", "generation", "segmenter")
#: lesion-supervision variants of Table 1
LESION_VARIANTS = ("1SEG", "1ECL+4DCL", "4SEG")


@dataclass
class QuConfig:
    """Every setting of Qu et al.'s pipeline with its source; choices marked (choice).

    One config for all stages: each stage reads what it needs, and the pipeline run folder's
    ``config.yaml`` is enough to rebuild any stage (``medsyn generate`` does).
    """

    NUMERIC_BOUNDS: ClassVar[dict[str, Bound]] = {
        "beta": Bound(0, lo_open=True, note="Alg. 1 threshold"), "slice_range": Bound(0, note="mm from slice 0"),
        "label_scale": Bound(0, lo_open=True), "label_rotation_deg": Bound(-180, 180, note="degrees"),
        "label_translation": Bound(0, 1, note="fraction of each side"),
        "slice_holdout": Bound(0, 1, hi_open=True, note="share of a labelled subject's slices held out; 0 = off"),
        "final_dice": Bound(0, 1, note="Sec. 2.8's check of the finished set")}

    # --- data (Sec. 3.2) ---
    modalities: list[str] = field(default_factory=lambda: ["t1n", "t1c", "t2w", "t2f"])  # BRATS2015: T1, T1c, T2, Flair
    label: str = "seg"  # lesion label file of each subject
    n_classes: int = 4  # label classes incl. background: BraTS 2021+ 0–3 (BRATS2015: 5, labels 0–4)
    slice_range: list[float] = field(default_factory=lambda: list(PAPER_SLICE_RANGE_MM))  # Sec. 3.2, mm from slice 0 (= BraTS 1 mm indices)
    slice_size: list[int] | None = None  # (choice) H×W grid, pad/crop; null = smallest multiple of 8 holding every slice
    unpaired: bool = True  # Sec. 1, 2.4: "训练数据无需配准" — each real x_i from its own random slice
    standardize_clip: float = DEFAULT_STANDARDIZE_CLIP  # (choice) per-image z-score clip before mapping to [0, 1]
    # issue 13: slices computed once per subject into an on-disk cache and read memory-mapped (bounded memory);
    # false: every slice in memory. slice_cache_dir: null = $MEDSYN_CACHE/qu-slices (~/.cache/medsyn/qu-slices)
    slice_cache: bool = True
    slice_cache_dir: str | None = None
    # --- Algorithms 1–2 (Sec. 2.2, 2.3) ---
    beta: float = DEFAULT_BETA  # (choice) Alg. 1 threshold, authors' code (docs/qu.md 1)
    mask_padding: int = DEFAULT_MASK_PADDING  # (choice) Alg. 2 p (docs/qu.md 4)
    label_tries: int = 20  # (choice) random labels tried per structure map (Sec. 2.5 "otherwise choose another label")
    # --- networks (sizes: choices, docs/qu.md 19) ---
    base_channels: int = 64
    code_channels: int = 64  # modality code (B, C, H/4, W/4)
    structure_code_channels: int = 4  # VAE latent of EC_f / DC_f
    n_down: int = 2
    d_layers: int = 3  # PatchGAN depth of D and D_f
    lesion_segmenter: Literal["1SEG", "1ECL+4DCL", "4SEG"] = "4SEG"  # Sec. 2.7 / Table 1 (4SEG: best Dice 0.838)
    input_dropout: float = 0.1  # Sec. 3.1: 0.1 dropout on the input layer
    disc_init_std: float = 0.2  # Sec. 3.1: discriminators N(0, 0.2²) (generators: mean filter)
    # --- losses (Sec. 2.3–2.6; weights ω not given by the paper: authors' code, QuLossWeights) ---
    loss: QuLossWeights = field(default_factory=QuLossWeights)
    sv_f_keep: Literal["none", "lesion"] = "lesion"  # (choice) loss_sv,f compared outside the new lesion (docs/qu.md 16)
    assist_in_generation: bool = True  # Sec. 2.4: the assist losses train "synchronously" with generation
    # --- optimisation (Sec. 3.1) ---
    lr: float = 1e-4  # base learning rate
    beta1: float = 0.5  # Adam β1
    beta2: float = 0.999  # (choice) Adam β2, the default
    weight_decay: float = 0.0  # "无权重衰减"
    # --- lesion segmenter (Sec. 2.8–2.9, 3.5–3.6) ---
    seg_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # (choice) MONAI 2D UNet levels
    # Sec. 2.9: "为每个模态单独训练一个病灶分割网络" — one segmenter per modality (the Dice filter then needs every
    # modality to show the lesion); "multichannel": one segmenter on all modalities as channels
    segmenter_input: Literal["per-modality", "multichannel"] = "per-modality"
    seg_res_units: int = 2  # (choice)
    seg_loss: Literal["mse", "dice_ce"] = "mse"  # Sec. 2.9 loss_l = Σ ||label − label_r||² (dice_ce: MONAI DiceCE)
    segmenter_epochs: int = 100  # Sec. 3.5–3.6: segmentation networks 100 epochs (generator stages: train.epochs = 50)
    # --- pipeline ---
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    train_subjects: list[str] | None = None  # set by the runner in each stage's config: the resolved training split
    # (choice) when the split has no labelled test subject, this share of each labelled training subject's lowest
    # in-range slices (+ a one-slice gap) is held out of every stage and the label pool, as the segmentation
    # experiments' test set (docs/qu.md, "Held-out test data"); 0: hold nothing out (no real test set then)
    slice_holdout: float = 0.3
    exclude_slices: dict[str, list[int]] | None = None  # set by the runner: held-out slices no stage trains on
    # --- synthetic data set (Sec. 2.8) ---
    filter_mae: float = DEFAULT_FILTER_MAE  # Alg. 3: keep a structure map when MAE < 0.05 (≥ 1 switches it off)
    min_dice: float = 0.95  # Sec. 2.8: keep a case when the real-trained segmenter's Dice ≥ 0.95 (0 switches it off)
    final_dice: float = 0.99  # Sec. 2.8: the finished set, segmented by the real-trained segmenter, must reach Dice ≥ 0.99
    max_attempts: int = 200  # (choice) attempts per synthetic slice before giving up with an error
    label_scale: list[float] = field(default_factory=lambda: [0.9, 1.1])  # (choice) Sec. 2.8 label augmentation
    label_rotation_deg: list[float] = field(default_factory=lambda: [-180.0, 180.0])  # (choice)
    label_translation: float = 0.05  # (choice) fraction of each side
    label_flip_prob: float = 0.5  # (choice)

    def __post_init__(self) -> None:
        # BRATS2015/BraTS 2021 spellings (t1, t2, flair, t1ce) name the files discover keys as t1n, t2w, t2f, t1c
        self.modalities = [canonical_modality(m) for m in self.modalities]

    def validate(self, prefix: str = "params") -> None:
        if not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"config key '{prefix}.modalities': got {self.modalities}, expected distinct modality names, "
                              "e.g. [t1n, t1c, t2w, t2f]")
        if len(self.modalities) < 2 and ("assist" in self.stages or "generation" in self.stages):
            raise ConfigError(f"config key '{prefix}.modalities': translation needs at least two modalities, got {self.modalities}")
        if self.n_classes < 2:
            raise ConfigError(f"config key '{prefix}.n_classes': got {self.n_classes}, expected ≥ 2 (background + lesion)")
        if len(self.slice_range) != 2 or not 0 <= self.slice_range[0] < self.slice_range[1]:
            raise ConfigError(f"config key '{prefix}.slice_range': got {self.slice_range}, expected [lo, hi] mm with "
                              "0 ≤ lo < hi, e.g. [55, 105] (Sec. 3.2)")
        if self.slice_size is not None:
            check_slice_size(self.slice_size, self.grid_multiple)
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages or list(self.stages) != [s for s in STAGES if s in self.stages]:
            raise ConfigError(f"config key '{prefix}.stages': got {self.stages}, expected a non-empty subset of "
                              f"{list(STAGES)} in that order")
        if "generation" in self.stages and "assist" not in self.stages:
            raise ConfigError(f"config key '{prefix}.stages': 'generation' starts from the 'assist' stage's networks; "
                              "list both")
        for name in ("lr", "beta", "standardize_clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key '{prefix}.{name}': got {getattr(self, name)}, expected > 0")
        if not 0 <= self.slice_holdout < 1:
            raise ConfigError(f"config key '{prefix}.slice_holdout': got {self.slice_holdout}, expected a share in "
                              "[0, 1), e.g. 0.3 (0: no held-out test slices)")
        if not 0 <= self.final_dice <= 1:
            raise ConfigError(f"config key '{prefix}.final_dice': got {self.final_dice}, expected a Dice in [0, 1] "
                              "(Sec. 2.8: 0.99; 0 switches the final check off)")
        if not 0 <= self.min_dice <= 1 or self.filter_mae <= 0:
            raise ConfigError(f"config keys '{prefix}.min_dice' / '{prefix}.filter_mae': got {self.min_dice} / "
                              f"{self.filter_mae}; expected min_dice in [0, 1] and filter_mae > 0")
        if min(self.base_channels, self.code_channels, self.structure_code_channels, self.label_tries,
               self.max_attempts, self.segmenter_epochs, self.n_down, self.d_layers) < 1:
            raise ConfigError(f"config section '{prefix}': channel counts, n_down, d_layers, label_tries, max_attempts "
                              "and segmenter_epochs must be ≥ 1")
        if len(self.seg_channels) < 2:
            raise ConfigError(f"config key '{prefix}.seg_channels': expected ≥ 2 levels, e.g. [32, 64, 128, 256]")

    @property
    def grid_multiple(self) -> int:
        """Slice sides must be multiples of this (every network halves the grid this many times)."""
        return 2 ** max(self.n_down, self.d_layers, len(self.seg_channels) - 1)

    @property
    def n_modalities(self) -> int:
        return len(self.modalities)


# --------------------------------------------------------------------------- the lesion segmenter


class SliceSegmenter(nn.Module):
    """One lesion segmenter of Sec. 2.8–2.9: ``in_channels`` images → class probabilities.

    ``(B, in_channels, H, W)`` standardised slices → ``(B, n_classes, H, W)`` softmax
    probabilities. Input dropout (Sec. 3.1) → MONAI 2D UNet (a choice; the paper gives no
    architecture). H and W must be multiples of 2^(levels − 1).
    """

    def __init__(self, in_channels: int, n_classes: int, channels: list[int], res_units: int = 2,
                 input_dropout: float = 0.1):
        super().__init__()
        from monai.networks.nets import UNet

        self.dropout = nn.Dropout(input_dropout)
        self.unet = UNet(spatial_dims=2, in_channels=in_channels, out_channels=n_classes, channels=tuple(channels),
                         strides=tuple([2] * (len(channels) - 1)), num_res_units=res_units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.unet(self.dropout(x)), dim=1)


class PerModalitySegmenter(nn.Module):
    """Sec. 2.9: "a lesion segmentation network for each modality, trained on real data".

    ``(B, M, H, W)`` → ``(B, M, n_classes, H, W)``: modality i's probabilities from its own
    one-channel :class:`SliceSegmenter` ``nets[i]``. The networks share nothing; trained by the
    sum of their losses (Sec. 2.9's ``loss_l = Σ_i ||label_i − label_{r,i}||²``) with one Adam,
    which is the same as one Adam each (Adam's update is per parameter).
    """

    def __init__(self, n_modalities: int, n_classes: int, channels: list[int], res_units: int = 2,
                 input_dropout: float = 0.1):
        super().__init__()
        self.nets = nn.ModuleList(SliceSegmenter(1, n_classes, channels, res_units, input_dropout)
                                  for _ in range(n_modalities))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([net(x[:, i:i + 1]) for i, net in enumerate(self.nets)], dim=1)


def build_segmenter(cfg: QuConfig) -> nn.Module:
    """``params.segmenter_input``: one segmenter per modality (Sec. 2.9, default) or one on all
    modalities as channels."""
    if cfg.segmenter_input == "per-modality":
        return PerModalitySegmenter(cfg.n_modalities, cfg.n_classes, list(cfg.seg_channels), cfg.seg_res_units,
                                    cfg.input_dropout)
    return SliceSegmenter(cfg.n_modalities, cfg.n_classes, list(cfg.seg_channels), cfg.seg_res_units, cfg.input_dropout)


def segment_views(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Probabilities of either segmenter as ``(B, V, n_classes, H, W)``: V = M modality views for
    :class:`PerModalitySegmenter`, V = 1 for the multichannel :class:`SliceSegmenter`."""
    probs = net(x)
    return probs if probs.dim() == 5 else probs[:, None]


def segmentation_loss(probs: torch.Tensor, label: torch.Tensor, cfg: QuConfig) -> torch.Tensor:
    """Sec. 2.9 ``loss_l = Σ_i ||label_i − label_{r,i}||²`` (one-hot vs probabilities, summed over
    classes, ``QuLossWeights.sv_l_class_weights`` if set), or MONAI's Dice + cross-entropy
    (``seg_loss: dice_ce``). ``probs`` ``(B, n_classes, H, W)``, or ``(B, M, n_classes, H, W)``
    from a per-modality segmenter: one loss per modality, summed (every modality has the same
    registered label)."""
    if probs.dim() == 5:
        return sum(segmentation_loss(probs[:, i], label, cfg) for i in range(probs.shape[1]))
    target = one_hot_label_torch(label, cfg.n_classes).to(probs)
    if cfg.seg_loss == "mse":
        return loss_sv_l([target], [probs], class_weights=cfg.loss.sv_l_class_weights)
    from monai.losses import DiceLoss

    dice = DiceLoss(include_background=False, softmax=False)(probs, target)
    return dice + F.nll_loss(torch.log(probs.clamp_min(1e-7)), label[:, 0].long())


def segmenter_step(net: nn.Module, opt: torch.optim.Optimizer, image: torch.Tensor, label: torch.Tensor,
                   cfg: QuConfig) -> torch.Tensor:
    """One update of a lesion segmenter on ``image`` ``(B, M, H, W)``, ``label`` ``(B, 1, H, W)``."""
    loss = segmentation_loss(net(image), label, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def adam(params, cfg: QuConfig) -> torch.optim.Adam:
    """Sec. 3.1: Adam, base learning rate 1e-4, β1 = 0.5, no weight decay."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------- the stages


class _QuStage(Method):
    """Shared construction: the networks a stage needs, built at the config's sizes."""

    def __init__(self, cfg: QuConfig, *, in_channels: int = 1, out_channels: int = 1,
                 patch_size: tuple[int, int] = (0, 0)):
        super().__init__()
        self.cfg = cfg
        if cfg.slice_size is None:
            raise ConfigError("config key 'params.slice_size': null must be resolved from the data before a Qu stage is "
                              "built (the qu-pipeline runner does this); give e.g. [96, 96]")

    def _structure_nets(self) -> None:
        c = self.cfg
        kw = dict(base_channels=c.base_channels, input_dropout=c.input_dropout)
        self.networks["EC_f"] = StructureEncoder(c.structure_code_channels, n_down=c.n_down, **kw)
        self.networks["DC_f"] = StructureDecoder(c.structure_code_channels, n_up=c.n_down, **kw)
        self.networks["MASK"] = MaskGenerator(c.code_channels, n_down=c.n_down, **kw)
        self.networks["D_f"] = StructureDiscriminator(n_layers=c.d_layers, init_std=c.disc_init_std, **kw)
        self.networks["FD_f"] = CodeDiscriminator(c.structure_code_channels, init_std=c.disc_init_std, **kw)

    def _modality_nets(self) -> None:
        c = self.cfg
        kw = dict(base_channels=c.base_channels, input_dropout=c.input_dropout)
        self.networks["EC"] = ModalityEncoder(c.code_channels, n_down=c.n_down, **kw)
        self.networks["DC"] = ModalityDecoder(c.n_modalities, c.code_channels, n_up=c.n_down, **kw)
        self.networks["D"] = ModalityDiscriminator(n_layers=c.d_layers, init_std=c.disc_init_std, **kw)
        self.networks["SEG"] = build_lesion_segmenter(c.lesion_segmenter, c.n_modalities, c.n_classes,
                                                      code_channels=c.code_channels, n_down=c.n_down, **kw)

    def _params(self, *names: str) -> list[nn.Parameter]:
        return [p for n in names for p in self.networks[n].parameters()]

    @torch.no_grad()
    def save_samples(self, path: Path, preview: Batch) -> Path:
        """The engine's preview grid: :meth:`_preview_columns` of the preview batch, in eval mode
        (the mode is restored afterwards), one row per sample."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            batch = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in preview.items()}
            return _save_grid(path, self._preview_columns(batch))
        finally:
            self.train(was)

    def _preview_columns(self, preview: Batch) -> list[tuple[str, torch.Tensor]]:
        """Named (B, 1, H, W) maps in [0, 1] for the preview grid, from the batch on the device."""
        raise NotImplementedError

    # ---------------------------------------------------------------- Sec. 2.4 (assist)
    def _assist(self, b: Batch, out: dict[str, torch.Tensor], *, real_d_terms: bool
                ) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor], torch.Tensor]:
        """Forward pass of Sec. 2.4 on the real slices of ``b``.

        Returns ``(d_loss_fn, g_loss_fn, seg_loss)``: the discriminator loss (called before D's
        step; fakes detached), the generator-side loss (called after, D frozen) and the lesion
        supervision ``loss_sv,l`` of the real slices (trains ``SEG`` only).
        """
        c, W = self.cfg, self.cfg.loss
        EC, DC, D, SEG = self.net("EC"), self.net("DC"), self.net("D"), self.net("SEG")
        M = c.n_modalities
        x = [b["image"][:, i:i + 1] for i in range(M)]  # real x_i, (B, 1, H, W)
        code = [EC(xi) for xi in x]  # code_i
        x_r = [DC(code[i], i) for i in range(M)]  # x_{r,i}: reconstruction
        pairs = [(s, t) for s in range(M) for t in range(M) if s != t]
        x_t = {(s, t): DC(code[s], t) for s, t in pairs}  # x_{t,s,t}: modality s translated into t
        code_t = {(s, t): EC(x_t[(s, t)]) for s, t in pairs}  # code_{t,s,t}: the translation re-encoded
        x_cr = {(t, s): DC(code_t[(s, t)], s) for s, t in pairs}  # x_{cr,t,s}: x_s → t → s

        # lesion supervision on real slices (Sec. 2.4, 2.7): SEG(x_i, i) vs l_i, labelled slices only
        seg_loss = torch.zeros((), device=x[0].device)
        for i in range(M):
            keep = b["has_label"][:, i] > 0
            if keep.any():
                target = one_hot_label_torch(b["label"][keep, i], c.n_classes).to(x[i])
                seg_loss = seg_loss + loss_sv_l([target], [SEG(x[i][keep], i)], class_weights=W.sv_l_class_weights)
        out["seg/sv_l_real"] = seg_loss.detach()

        def d_loss() -> torch.Tensor:
            d_t, c_t = {}, {}
            for k, v in x_t.items():
                d_t[k], c_t[k] = D(v.detach())
            loss = loss_D_assist(d_t, c_t, w_adv=W.D_assist_adv, w_class=W.D_assist_class)  # Sec. 2.4
            out["d/assist"] = loss.detach()
            if real_d_terms:  # loss_D,assist has no real term; the real terms of loss_D / loss_D,class (docs/qu.md 12)
                real = torch.zeros((), device=loss.device)
                for i in range(M):
                    d_i, c_i = D(x[i])
                    real = real + W.D_real * sq(d_i, 1.0) + W.D_class_real * sq(c_i, float(i))
                out["d/real"] = real.detach()
                loss = loss + real
            return loss

        def g_loss() -> torch.Tensor:
            d_t, c_t = {}, {}
            for k, v in x_t.items():
                d_t[k], c_t[k] = D(v)
            terms = {
                "g/assist_adv_class": loss_G_assist(d_t, c_t, w_adv=W.G_assist_adv, w_class=W.G_assist_class),
                "g/sv_x": W.sv_x * loss_sv_x(x, x_r),
                "g/cycle": W.cycle * loss_cycle(x, x_cr),
                "g/cycle_consistency": W.cycle_consistency * loss_cycle_consistency(x_cr) if M > 2
                else torch.zeros((), device=x[0].device),
                "g/code_consistency": W.code_consistency * loss_code_consistency(code, code_t),
            }
            for k, v in terms.items():
                out[k] = v.detach()
            return sum(terms.values())

        out["assist/mae_rec"] = sum((a - b_).abs().mean() for a, b_ in zip(x, x_r)).detach() / M
        return d_loss, g_loss, seg_loss


class QuStructure(_QuStage):
    """Sec. 2.3: structure maps from N(0, 1) (VAE–GAN hybrid) and the brain-mask generator MASK."""

    def __init__(self, cfg: QuConfig, **kw: Any):
        super().__init__(cfg, **kw)
        self._structure_nets()
        self.optimizers["G"] = adam(self._params("EC_f", "DC_f", "MASK"), cfg)
        self.optimizers["D"] = adam(self._params("D_f", "FD_f"), cfg)  # discriminators updated separately

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, torch.Tensor]:
        c, W, out = self.cfg, self.cfg.loss, {}
        EC_f, DC_f, MASK, D_f, FD_f = (self.net(n) for n in ("EC_f", "DC_f", "MASK", "D_f", "FD_f"))
        b = next_batch()
        f, mask = b["f"], b["mask"]  # f: Alg. 1 of a random modality, tumour removed; mask: Alg. 2 (1 outside)

        code_mean, code_logvar = EC_f(f)
        code_f = reparameterize(code_mean, code_logvar)  # code_f = mean + exp(0.5 logvar) · N(0, 1)
        f_r = DC_f(code_f)  # reconstructed structure map
        mask_r = MASK(f)
        code_f_g = torch.randn_like(code_f)  # code_{f,g} ~ N(0, 1²)
        f_g = DC_f(code_f_g)  # random structure map
        mask_g = MASK(f_g)

        # discriminators: D_f (f real, f_g fake), FD_f (code_{f,g} real, code_f fake)
        loss_d = W.FD_f * loss_FD_f(FD_f(code_f_g), FD_f(code_f.detach())) + W.D_f * loss_D_f(D_f(f), D_f(f_g.detach()))
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()

        with frozen(self.networks["D_f"], self.networks["FD_f"]):
            terms = {
                "g/G_f": loss_G_f(FD_f(code_f), D_f(f_g), w_code=W.G_f_code, w_map=W.G_f_map),
                "g/normal": W.normal * loss_normal(code_mean, code_logvar),
                "g/sv": loss_sv(f, f_r, mask, w_rec=W.sv_rec, w_outside=W.sv_outside),
                "g/mask": loss_mask(mask, mask_r, f, f_r, f_g, mask_g, w_rec=W.mask_rec, w_outside=W.mask_outside),
            }
            loss_g = sum(terms.values())
            self.optimizers["G"].zero_grad(set_to_none=True)
            loss_g.backward()
            self.optimizers["G"].step()
        out["d/total"] = loss_d.detach()
        out.update({k: v.detach() for k, v in terms.items()})
        out["g/total"] = loss_g.detach()
        out["mask/mae"] = (mask_r.detach() - mask).abs().mean()
        return out

    def _preview_columns(self, preview: Batch) -> list[tuple[str, torch.Tensor]]:
        f = preview["f"]
        mean, _ = self.networks["EC_f"](f)
        f_r = self.networks["DC_f"](mean)
        f_g = self.networks["DC_f"](torch.randn_like(mean))
        cols = [("f", f), ("f_r", f_r), ("mask_r", self.networks["MASK"](f)), ("f_g", f_g),
                ("mask_g", self.networks["MASK"](f_g))]
        return cols


class QuAssist(_QuStage):
    """Sec. 2.4: modality reconstruction / translation / cycles on real slices, lesion supervision."""

    def __init__(self, cfg: QuConfig, **kw: Any):
        super().__init__(cfg, **kw)
        self._modality_nets()
        self.optimizers["G"] = adam(self._params("EC", "DC"), cfg)
        self.optimizers["SEG"] = adam(self._params("SEG"), cfg)
        self.optimizers["D"] = adam(self._params("D"), cfg)

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        b = next_batch()
        d_loss, g_loss, seg_loss = self._assist(b, out, real_d_terms=True)
        loss_d = d_loss()
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()
        with frozen(self.networks["D"]):
            loss_g = g_loss() + self.cfg.loss.sv_l * seg_loss
            self.optimizers["G"].zero_grad(set_to_none=True)
            self.optimizers["SEG"].zero_grad(set_to_none=True)
            loss_g.backward()
            self.optimizers["G"].step()
            self.optimizers["SEG"].step()
        out["d/total"], out["g/total"] = loss_d.detach(), loss_g.detach()
        return out

    def _preview_columns(self, preview: Batch) -> list[tuple[str, torch.Tensor]]:
        x = preview["image"]
        code = self.networks["EC"](x[:, :1])
        cols = [(f"x_{m}", x[:, i:i + 1]) for i, m in enumerate(self.cfg.modalities)]
        cols += [(f"{self.cfg.modalities[0]}→{m}", self.networks["DC"](code, i)) for i, m in enumerate(self.cfg.modalities)]
        return cols


class QuGeneration(_QuStage):
    """Sec. 2.5–2.7: fused structure map + lesion label → every modality, with the Sec. 2.4 losses."""

    def __init__(self, cfg: QuConfig, **kw: Any):
        super().__init__(cfg, **kw)
        self._modality_nets()
        self.networks["FE"] = FusionEncoder(cfg.n_classes, cfg.code_channels, cfg.base_channels, cfg.n_down,
                                            cfg.input_dropout)
        self.optimizers["G"] = adam(self._params("FE", "EC", "DC"), cfg)
        self.optimizers["SEG"] = adam(self._params("SEG"), cfg)  # updated by real slices only (Sec. 2.6–2.7)
        self.optimizers["D"] = adam(self._params("D"), cfg)

    def generate(self, f: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``fuse(f, label)`` → ``FE`` → ``code_g`` → ``DC(code_g, i)`` for every modality i (Fig. 4)."""
        fused = fuse_label_structure_torch(f, label, self.cfg.n_classes)  # Sec. 2.5
        code_g = self.net("FE")(fused)
        return code_g, [self.net("DC")(code_g, i) for i in range(self.cfg.n_modalities)]

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, torch.Tensor]:
        c, W, out = self.cfg, self.cfg.loss, {}
        EC, DC, D, SEG = self.net("EC"), self.net("DC"), self.net("D"), self.net("SEG")
        M = c.n_modalities
        b = next_batch()
        x = [b["image"][:, i:i + 1] for i in range(M)]  # real x_i
        f, mask, label = b["f"], b["mask"], b["label_random"]  # real-derived f (tumour removed), Alg. 2 mask, random label

        code_g, x_g = self.generate(f, label)  # x_{g,i}
        code_g_i = [EC(xg) for xg in x_g]  # code_{g,i}
        x_gt = {(j, i): DC(code_g_i[j], i) for j in range(M) for i in range(M) if j != i}  # x_{gt,j,i}
        f_g = [structural_feature_map_torch(xg, c.beta, mode="ste") for xg in x_g]  # f_{g,i} = Alg. 1(x_{g,i})
        if c.assist_in_generation:
            assist_d, assist_g, seg_loss = self._assist(b, out, real_d_terms=False)

        # discriminator (Sec. 2.6): loss_D + loss_D,class (+ loss_D,assist)
        d_real, c_real = zip(*(D(xi) for xi in x))
        d_g, c_g = zip(*(D(xg.detach()) for xg in x_g))
        loss_d = (loss_D(d_real, d_g, w_real=W.D_real, w_fake=W.D_fake)
                  + loss_D_class(c_real, c_g, w_real=W.D_class_real, w_fake=W.D_class_fake))
        out["d/gen"] = loss_d.detach()
        if c.assist_in_generation:
            loss_d = loss_d + assist_d()
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d.backward()
        self.optimizers["D"].step()

        # generator (Sec. 2.6); SEG gives the lesion loss but is not trained by synthetic images (Sec. 2.7)
        onehot = one_hot_label_torch(label, c.n_classes).to(f)
        keep = extract_mask_torch(label.float(), 0) if c.sv_f_keep == "lesion" else None  # 1 outside the new lesion
        with frozen(self.networks["D"]):
            d_g, c_g = zip(*(D(xg) for xg in x_g))
            with frozen(self.networks["SEG"]):
                l_g = [SEG(x_g[i], i) for i in range(M)]  # label_{g,i}
            terms = {
                "g/adv": W.G * loss_G(d_g),
                "g/class": W.G_class * loss_G_class(c_g),
                "g/sv_f": W.sv_f * loss_sv_f(f, f_g, keep=keep),
                "g/sv_l": W.sv_l_gen * loss_sv_l([onehot] * M, l_g, class_weights=W.sv_l_class_weights),
                "g/trans": W.trans * loss_trans(x_g, x_gt),
                "g/trans_code": loss_trans_code(code_g, code_g_i, w_input=W.trans_code_input, w_pair=W.trans_code_pair),
                "g/outside_mask": W.outside_mask * loss_outside_mask(x_g, mask),
            }
            loss_g = sum(terms.values())
            if c.assist_in_generation:
                loss_g = loss_g + assist_g() + W.sv_l * seg_loss
            for name in ("G", "SEG"):
                self.optimizers[name].zero_grad(set_to_none=True)
            loss_g.backward()
            self.optimizers["G"].step()
            if c.assist_in_generation:
                self.optimizers["SEG"].step()
        out.update({k: v.detach() for k, v in terms.items()})
        out["d/total"], out["g/total"] = loss_d.detach(), loss_g.detach()
        return out

    def _preview_columns(self, preview: Batch) -> list[tuple[str, torch.Tensor]]:
        f, label = preview["f"], preview["label_random"]
        _, x_g = self.generate(f, label)
        cols = [("f", f), ("label", label.float() / max(1, self.cfg.n_classes - 1))]
        cols += [(f"x_g {m}", x_g[i]) for i, m in enumerate(self.cfg.modalities)]
        return cols


class QuSegmenter(_QuStage):
    """Sec. 2.8–2.9: the lesion segmenter(s) of the Dice filter, trained on real slices
    (``params.segmenter_input``: one per modality, or one on all modalities as channels)."""

    def __init__(self, cfg: QuConfig, **kw: Any):
        super().__init__(cfg, **kw)
        self.networks["S"] = build_segmenter(cfg)
        self.optimizers["S"] = adam(self._params("S"), cfg)

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, torch.Tensor]:
        b = next_batch()
        loss = segmenter_step(self.net("S"), self.optimizers["S"], b["image"], b["label"], self.cfg)
        return {f"seg/{self.cfg.seg_loss}": loss}

    def _preview_columns(self, preview: Batch) -> list[tuple[str, torch.Tensor]]:
        x = preview["image"]
        pred = segment_views(self.networks["S"], x)[:, 0].argmax(1, keepdim=True).float()  # first modality's view
        k = max(1, self.cfg.n_classes - 1)
        cols = [(self.cfg.modalities[0], x[:, :1]), ("label", preview["label"].float() / k), ("prediction", pred / k)]
        return cols


def _save_grid(path: Path, cols: list[tuple[str, torch.Tensor]]) -> Path:
    """One row per preview sample, one column per named ``(B, 1, H, W)`` map in [0, 1]."""
    from medsyn.reports.samples import save_image_grid

    return save_image_grid(path, [(title, t, "gray", (0, 1)) for title, t in cols], cell_inches=2.0)


# --------------------------------------------------------------------------- samplers


_SLICE_CACHE: dict[tuple, QuSlices] = {}


def slice_store(p: QuConfig) -> bool | str:
    """``load_slices``' ``store`` argument for ``params.slice_cache`` / ``params.slice_cache_dir``."""
    return False if not p.slice_cache else (p.slice_cache_dir or True)


def training_slices(cfg_run: Any, dataset: Any, ids: list[str], *, labelled_only: bool = False) -> QuSlices:
    """The stage's training slices (cached: the pipeline's stages share one load per process):
    the in-range slices of ``ids`` except the held-out ``params.exclude_slices``."""
    p: QuConfig = _params(cfg_run)
    d = cfg_run.data
    key = (str(dataset.root), str(d.manifest), tuple(ids), tuple(p.modalities), p.label, tuple(p.slice_range),
           tuple(p.slice_size), p.n_classes, p.standardize_clip, labelled_only,
           tuple(sorted((k, tuple(v)) for k, v in (p.exclude_slices or {}).items())), slice_store(p))
    if key not in _SLICE_CACHE:
        _SLICE_CACHE.clear()  # keep one set in memory
        _SLICE_CACHE[key] = load_slices(dataset, ids, p.modalities, label=p.label, slice_range_mm=p.slice_range,
                                        slice_size=p.slice_size, n_classes=p.n_classes, labelled_only=labelled_only,
                                        clip=p.standardize_clip, exclude=p.exclude_slices, store=slice_store(p))
    return _SLICE_CACHE[key]


def _params(cfg_run: Any) -> QuConfig:
    from medsyn.config import method_params

    return method_params(cfg_run)


def _make_sampler(cfg_run: Any, data: Any, seed: int, *, stage: str) -> QuSliceSampler:
    """``MethodSpec.make_sampler``: whole slices of the training split (batch 1, Sec. 3.1)."""
    p = _params(cfg_run)
    seg = stage == "segmenter"
    ids = list(p.train_subjects) if p.train_subjects is not None else list(data.splits["train"])
    slices = training_slices(cfg_run, data.dataset, ids, labelled_only=seg)
    if stage == "generation" and slices.labelled().size == 0:
        raise DatasetError(f"{data.dataset.root}: qu-generation fuses real lesion labels (Sec. 2.5–2.6), but no training "
                           f"subject has a {p.label!r} label file; add labels or set params.label")
    return QuSliceSampler(slices, mode="segmenter" if seg else "gan", unpaired=p.unpaired, beta=p.beta,
                          mask_padding=p.mask_padding, label_tries=p.label_tries, seed=seed)


def _run_pipeline(*args: Any, **kw: Any) -> Any:
    from medsyn.pipelines.qu import run_pipeline  # late import: the runner imports the engine

    return run_pipeline(*args, **kw)


class _PipelineOnly(Method):
    def __init__(self, cfg: QuConfig, **kw: Any):
        raise ConfigError("method 'qu-pipeline' trains several stages; run it through medsyn.pipelines.qu.run_pipeline "
                          "(`medsyn train` does this when MethodSpec.pipeline is dispatched), or train one stage with "
                          "method qu-structure, qu-assist, qu-generation or qu-segmenter")


_STAGE_CLASSES = {"structure": QuStructure, "assist": QuAssist, "generation": QuGeneration, "segmenter": QuSegmenter}
_STAGE_SUMMARIES = {
    "structure": "Qu et al. stage 1: random structure maps from N(0,1) (VAE-GAN) + brain-mask generator MASK (Sec. 2.3)",
    "assist": "Qu et al. stage 2: auxiliary modality reconstruction/translation + lesion supervision (Sec. 2.4, Table 1)",
    "generation": "Qu et al. stage 3: multimodal MRI from a structure map fused with a lesion label (Sec. 2.5-2.7)",
    "segmenter": "Qu et al. stage 4: lesion segmenter on real slices, filters synthetic cases (Sec. 2.8-2.9)",
}

for _stage in STAGES:
    register(MethodSpec(f"qu-{_stage}", _STAGE_SUMMARIES[_stage], PAPER, QuConfig, _STAGE_CLASSES[_stage], {},
                        sample_kind="2d", make_sampler=functools.partial(_make_sampler, stage=_stage),
                        predicts_volumes=False))

register(MethodSpec("qu-pipeline", "Qu et al.: lesion label + noise -> registered multimodal brain MRI; trains all "
                    "stages into one run folder (use `medsyn generate`)", PAPER, QuConfig, _PipelineOnly, {},
                    sample_kind="2d", predicts_volumes=False, pipeline=_run_pipeline))
