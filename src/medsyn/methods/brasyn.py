"""BraSyn (BraTS 2023–2025 "missing MRI" task): any one of t1n, t1c, t2w, t2f is absent and is
synthesised from the other three (Li et al., "The Brain Tumor Segmentation (BraTS) Challenge 2023:
Brain MR Image Synthesis for Tumor Segmentation (BraSyn)", arXiv:2305.09011).

One network completes every contrast. Its input is all four contrasts in a fixed order
(``params.contrasts`` = ``data.source``), k adjacent slices each, with the missing one filled with
``params.fill_value`` (0 by default, as the task describes: "zero-filled"), followed by one
constant one-hot channel per contrast saying which one is missing::

    x = [t1n ×k | t1c ×k | t2w ×k | t2f ×k | code_t1n | code_t1c | code_t2w | code_t2f]  (B, 4k + 4, H, W)
    y = the missing contrast's centre slice                                               (B, 1, H, W)

Training draws the missing contrast at random, uniformly, for every sample
(:class:`MissingContrastSampler`, wrapping the usual patch sampler); the target is that contrast's
own normalised slice. The networks, losses and step are an existing method's, unchanged:

* ``brasyn``: Nie et al. 2018 (methods/nie2018.py) — 2.5D UNet, global WGAN-GP critic D1, local
  confidence FCN D2, difficulty-aware attention loss;
* ``brasyn-casnet``: MedGAN (methods/medgan.py) — CasNet generator + PatchGAN, without the VGG-19
  losses so that it runs without a weights file (2D slices, k = 1).

Validation during training and ``medsyn predict`` without ``--missing`` synthesise
``params.validate_missing`` (= ``data.target``) from the three others; ``medsyn predict RUN DATASET
--missing`` (:func:`predict_missing`) finds each subject's absent contrast and writes it with the
dataset's own naming. See docs/brasyn.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from medsyn.data.layouts import canonical_modality
from medsyn.errors import ConfigError, DatasetError, GeometryError, OutputError
from medsyn.methods.base import MethodSpec, register
from medsyn.methods.medgan import MedGAN, MedGANConfig, make_whole_slice_sampler
from medsyn.methods.nie2018 import NieConfig, NieDualGAN

PAPER = ("BraSyn: Li et al., arXiv:2305.09011 (BraTS 2023 missing-MRI synthesis); networks and losses of "
         "Nie et al., MICCAI 2018 (brasyn) or MedGAN, Armanious et al. 2020 (brasyn-casnet)")
BRASYN_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")


# ------------------------------------------------------------------------------------------------
# The input code: which contrast is missing
# ------------------------------------------------------------------------------------------------
def complete_input(x: torch.Tensor, missing: torch.Tensor, n_contrasts: int, fill_value: float = 0.0) -> torch.Tensor:
    """All contrasts (B, N·k, H, W) → network input (B, N·k + N, H, W).

    Contrast ``missing[b]`` (channels m·k … m·k + k − 1 of sample b) is replaced by ``fill_value``;
    N constant channels follow, channel N·k + m being 1 where m is missing and 0 elsewhere.
    ``missing``: (B,) int64 in [0, N).
    """
    b, c, h, w = x.shape
    if c % n_contrasts:
        raise ValueError(f"{c} input channels are not {n_contrasts} contrasts × k slices")
    k = c // n_contrasts
    code = torch.nn.functional.one_hot(missing.to(x.device).long(), n_contrasts).to(x.dtype)  # (B, N)
    keep = 1.0 - code.repeat_interleave(k, dim=1)  # (B, N·k): 0 on the missing contrast's slices
    filled = x * keep[:, :, None, None] + fill_value * (1.0 - keep)[:, :, None, None]
    return torch.cat([filled, code[:, :, None, None].expand(b, n_contrasts, h, w)], dim=1)


class MissingContrastInput(nn.Module):
    """The generator of a BraSyn run: ``net`` behind :func:`complete_input`.

    forward(x, missing=None): x (B, N·k + N, H, W), already coded (training batches), goes to ``net``
    unchanged; x (B, N·k, H, W) with every contrast (the engine's validation, plain ``medsyn
    predict``) is coded first, with contrast ``missing`` (default ``default_missing``) absent.
    Output: (B, 1, H, W).
    """

    def __init__(self, net: nn.Module, n_contrasts: int, context: int, default_missing: int, fill_value: float = 0.0):
        super().__init__()
        self.net = net
        self.n_contrasts, self.context = n_contrasts, context
        self.default_missing, self.fill_value = default_missing, fill_value

    def forward(self, x: torch.Tensor, missing: int | torch.Tensor | None = None) -> torch.Tensor:
        n, k = self.n_contrasts, self.context
        if missing is None and x.shape[1] == n * k + n:
            return self.net(x)
        if x.shape[1] != n * k:
            raise ValueError(f"input has {x.shape[1]} channels; expected {n} contrasts × {k} slices "
                             f"({n * k}) or that plus {n} code channels")
        m = self.default_missing if missing is None else missing
        if not torch.is_tensor(m):
            m = torch.full((x.shape[0],), int(m), dtype=torch.long, device=x.device)
        return self.net(complete_input(x, m, n, self.fill_value))


# ------------------------------------------------------------------------------------------------
# Training samples: the missing contrast drawn per sample
# ------------------------------------------------------------------------------------------------
class MissingContrastSampler:
    """Wraps a sampler of all-contrast batches; draws each sample's missing contrast.

    The base sampler's ``batch_at(position, n)`` gives {"source": (n, N·k, H, W), "target", "mask"};
    this one returns {"source": (n, N·k + N, H, W) coded by :func:`complete_input`, "target": the
    missing contrast's centre slice (n, 1, H, W), "mask"}. Sample ``i`` of the run has its missing
    contrast drawn from a generator seeded by ``(seed, i)`` only (the base sampler's counter-based
    scheme), so a resumed run, any loader worker and any rank draw the same choice.
    """

    #: mixed into the seed so the choice is independent of the base sampler's draws for sample i
    STREAM = 0xB5A5

    def __init__(self, base: Any, n_contrasts: int, *, seed: int, fill_value: float = 0.0):
        if not (hasattr(base, "batch_at") and hasattr(base, "position")):
            raise TypeError(f"{type(base).__name__} cannot draw a batch at a position (batch_at); "
                            "MissingContrastSampler needs a counter-based sampler")
        self.base, self.n_contrasts, self.seed, self.fill_value = base, n_contrasts, int(seed), fill_value

    # the engine reads and sets the position, shards, saves and restores through these
    @property
    def position(self) -> int:
        return self.base.position

    @position.setter
    def position(self, value: int) -> None:
        self.base.position = value

    @property
    def world_size(self) -> int:
        return getattr(self.base, "world_size", 1)

    @property
    def rank(self) -> int:
        return getattr(self.base, "rank", 0)

    def shard(self, rank: int, world_size: int) -> None:
        self.base.shard(rank, world_size)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def missing_at(self, index: int) -> int:
        """The missing contrast of sample ``index`` of the run: a function of (seed, index) only."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFF_FFFF_FFFF_FFFF, self.STREAM, int(index)]))
        return int(rng.integers(self.n_contrasts))

    def batch_at(self, position: int, n: int) -> dict[str, torch.Tensor]:
        b = self.base.batch_at(position, n)
        x = b["source"]
        k = x.shape[1] // self.n_contrasts
        first = position + self.rank * n
        missing = torch.tensor([self.missing_at(first + j) for j in range(n)], dtype=torch.long)
        centre = missing * k + k // 2
        target = x[torch.arange(n), centre][:, None].contiguous()
        return {"source": complete_input(x, missing, self.n_contrasts, self.fill_value), "target": target,
                "mask": b["mask"], "missing": missing}

    def batch(self, n: int) -> dict[str, torch.Tensor]:
        out = self.batch_at(self.position, n)
        self.position = self.position + n * self.world_size
        return out


def _check_contrasts(cfg: Any, params: Any) -> None:
    d = cfg.data
    if list(d.source) != list(params.contrasts):
        raise ConfigError(f"config key 'data.source': got {list(d.source)}; a BraSyn run reads every contrast, "
                          f"in params.contrasts' order: {list(params.contrasts)}")
    if d.target != params.validate_missing:
        raise ConfigError(f"config key 'data.target': got {d.target!r}; validation synthesises "
                          f"params.validate_missing = {params.validate_missing!r}: set both to the same contrast")


def _patch_sampler(cfg: Any, data: Any, seed: int) -> Any:
    """Nie et al.'s 2.5D patch sampler over the training cases (data.* settings)."""
    from medsyn.data.sampling import PatchSampler25D

    d = cfg.data
    return PatchSampler25D(data.train, slice_axis=d.slice_axis, context=d.context_slices,
                           patch_size=tuple(d.patch_size), foreground_fraction=d.foreground_fraction,
                           label_fraction=d.label_fraction, augment=d.augment, flip=d.flip, seed=seed)


def missing_sampler(base_sampler: Callable[..., Any]) -> Callable[..., MissingContrastSampler]:
    """``MethodSpec.make_sampler`` for a BraSyn variant: ``base_sampler``'s batches, coded."""

    def make(cfg: Any, data: Any, seed: int) -> MissingContrastSampler:
        from medsyn.config import method_params

        params = method_params(cfg)
        _check_contrasts(cfg, params)
        return MissingContrastSampler(base_sampler(cfg, data, seed), len(params.contrasts), seed=seed,
                                      fill_value=params.fill_value)

    return make


# ------------------------------------------------------------------------------------------------
# Configs and methods: an existing method with N more input channels and a coding generator
# ------------------------------------------------------------------------------------------------
@dataclass
class _MissingContrastParams:
    contrasts: list[str] = field(default_factory=lambda: list(BRASYN_CONTRASTS))  # channel order = data.source
    validate_missing: str = "t2w"  # (choice) what validation synthesises; must equal data.target
    fill_value: float = 0.0  # the missing contrast's input value ("zero-filled", BraSyn task)

    def __post_init__(self) -> None:
        # BraTS 2021 spellings accepted, as in data.source (medsyn.data.layouts)
        self.contrasts = [canonical_modality(m) for m in self.contrasts]
        self.validate_missing = canonical_modality(self.validate_missing)

    def _validate_contrasts(self, prefix: str) -> None:
        if len(self.contrasts) < 2 or len(set(self.contrasts)) != len(self.contrasts):
            raise ConfigError(f"config key '{prefix}.contrasts': got {self.contrasts}; expected ≥ 2 distinct contrasts, "
                              f"e.g. {list(BRASYN_CONTRASTS)}")
        if self.validate_missing not in self.contrasts:
            raise ConfigError(f"config key '{prefix}.validate_missing': got {self.validate_missing!r}; "
                              f"expected one of {self.contrasts}")


@dataclass
class BraSynNieConfig(NieConfig, _MissingContrastParams):
    """Nie et al.'s hyper-parameters (NieConfig) + which contrasts and how the missing one is coded."""

    def validate(self, prefix: str = "params") -> None:
        NieConfig.validate(self, prefix)
        self._validate_contrasts(prefix)


@dataclass
class BraSynCasNetConfig(MedGANConfig, _MissingContrastParams):
    """MedGAN's hyper-parameters (MedGANConfig) + which contrasts and how the missing one is coded."""

    def validate(self, prefix: str = "params") -> None:
        MedGANConfig.validate(self, prefix)
        self._validate_contrasts(prefix)


class _MissingContrastMethod:
    """Mixin before a Method class: N code channels more at G's input, G wrapped by MissingContrastInput.

    ``in_channels`` from the engine is N·k (every contrast); the wrapped method is built for N·k + N.
    """

    def __init__(self, cfg: Any, *, in_channels: int, out_channels: int = 1, patch_size: tuple[int, int] = (144, 144)):
        n = len(cfg.contrasts)
        if in_channels % n:
            raise ConfigError(f"config key 'data.source': {in_channels} input channels are not "
                              f"{n} contrasts ({', '.join(cfg.contrasts)}) × k slices")
        super().__init__(cfg, in_channels=in_channels + n, out_channels=out_channels, patch_size=patch_size)
        self.n_contrasts, self.context = n, in_channels // n
        self.networks["G"] = MissingContrastInput(self.networks["G"], n, self.context,
                                                  cfg.contrasts.index(cfg.validate_missing), cfg.fill_value)


class BraSynNie(_MissingContrastMethod, NieDualGAN):
    """Nie et al.'s dual-discriminator GAN with attention, completing any missing contrast."""


class BraSynCasNet(_MissingContrastMethod, MedGAN):
    """MedGAN's CasNet + PatchGAN, completing any missing contrast."""


register(MethodSpec("brasyn", "BraSyn: synthesise whichever of t1n/t1c/t2w/t2f is missing from the other three "
                    "(Nie et al. 2.5D UNet + dual discriminators + attention; missing contrast drawn per sample)",
                    PAPER, BraSynNieConfig, BraSynNie, {}, sample_kind="2.5d",
                    make_sampler=missing_sampler(_patch_sampler)))
register(MethodSpec("brasyn-casnet", "BraSyn with MedGAN's CasNet generator + PatchGAN (no VGG-19 losses; 2D slices)",
                    PAPER, BraSynCasNetConfig, BraSynCasNet, dict(lambda_style=0.0, lambda_content=0.0),
                    sample_kind="2d", make_sampler=missing_sampler(make_whole_slice_sampler)))


# ------------------------------------------------------------------------------------------------
# Completing a dataset: `medsyn predict RUN DATASET --missing`
# ------------------------------------------------------------------------------------------------
@dataclass
class CompletionResult:
    written: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per subject that was not completed


def predict_missing(run_dir: str | Path, datasets: list[str | Path], out: str | Path, *, which: str = "best",
                    device: str = "auto", force: bool = False,
                    progress: Callable[[str, int, int], None] | None = None) -> CompletionResult:
    """For each subject of ``datasets``: find its one absent contrast, synthesise it, write it under ``out``
    with the dataset's own naming (``Dataset.output_relpath``: BraTS 2023 ``<id>/<id>-t2w.nii.gz``).

    A subject with no contrast or more than one contrast missing, or whose files cannot be read, gets one
    line in ``problems`` and the others go on. Existing outputs are refused (before any work) unless ``force``.
    The result is written in the scale of the subject's present contrasts: MR has no absolute unit, so the
    network output is mapped back with the mean of the present contrasts' own normalisation inverses.
    """
    from medsyn.data.cases import load_case
    from medsyn.data.dataset import discover
    from medsyn.data.sampling import AXES
    from medsyn.inference.predict import load_run
    from medsyn.inference.sliding_window import predict_volume_25d
    from medsyn.io.image import write_like

    run = load_run(run_dir, which, device)
    method, cfg = run.method, run.cfg
    if not isinstance(method, _MissingContrastMethod):
        raise ConfigError(f"{run_dir}: --missing needs a BraSyn run (method brasyn or brasyn-casnet); "
                          f"this run's method is {cfg.method!r}")
    contrasts = list(method.cfg.contrasts)
    out, res = Path(out), CompletionResult()
    todo = []
    for root in datasets:
        ds = discover(root)
        for sid in ds.ids():
            s = ds.subjects[sid]
            absent = [c for c in contrasts if c not in s.files]
            if len(absent) != 1:
                what = "none is missing" if not absent else f"{len(absent)} are missing ({', '.join(absent)})"
                res.problems.append(f"{s.folder or sid}: subject {sid!r} not completed: {what}; --missing synthesises "
                                    f"exactly one of {', '.join(contrasts)}")
                continue
            todo.append((s, absent[0], out / ds.output_relpath(sid, absent[0])))
    existing = [p for _, _, p in todo if p.exists()]
    if existing and not force:
        raise OutputError(f"{existing[0]}: output exists ({len(existing)} in all); pass --force to overwrite or choose another --out")
    G = method.networks["G"]
    k = method.context
    for s, miss, path in todo:
        present = [c for c in contrasts if c != miss]
        m_idx = contrasts.index(miss)
        try:
            case = load_case(s, present, None, mask=None, label=None, resample=cfg.data.resample, require_target=False)
            norms = {c: run.norm.source_normalizer(c, case.sources[c].array, case.mask) for c in present}
            ref = case.sources[present[0]].array
            source = np.stack([norms[c].forward(case.sources[c].array) if c in norms
                               else np.zeros(ref.shape, np.float32) for c in contrasts]).astype(np.float32)
            model = (lambda x, m=m_idx: G(x, m))
            cb = (lambda d, t, sid=s.id: progress(sid, d, t)) if progress else None
            pred_n = predict_volume_25d(model, source, slice_axis=AXES[cfg.data.slice_axis], context=k,
                                        patch_size=tuple(cfg.data.patch_size), overlap=cfg.inference.overlap,
                                        blend=cfg.inference.blend, batch_size=cfg.inference.batch_size,
                                        device=run.device, autocast_dtype=method.runtime.amp_dtype, progress=cb)[0]
            pred = np.mean([norms[c].inverse(pred_n) for c in present], axis=0).astype(np.float32)
            if cfg.inference.mask_background:
                pred[~case.mask] = run.norm.target_background
            res.written.append(write_like(case.reference, pred, path, dtype=np.dtype(run.norm.target_dtype)))
        except (DatasetError, GeometryError) as e:
            res.problems.append(f"subject {s.id!r} not completed: {e}")
    return res
