"""Full-volume prediction from a run folder, back to the input's geometry and the target's units.

``medsyn predict RUN_DIR INPUT... --out DIR`` → ``DIR/<subject>/<target>.nii.gz`` (and, for
methods with a confidence map, ``DIR/<subject>/<target>_confidence.nii.gz``).

Steps per subject: read the source modalities (canonical orientation, one grid), normalise each
source with the run's recipe, run the generator over the volume with the sliding window
(sampler + model + aggregator, medsyn.inference.sliding_window), invert the target normaliser
(HU for CT; the training targets' learned scale for MR), and write in the input's own geometry.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medsyn.config import RunConfig, method_params
from medsyn.data.cases import Case, load_case
from medsyn.data.dataset import Subject, discover, read_subject_folder
from medsyn.data.normalization import NormalizationState
from medsyn.data.pipeline import normalize_case
from medsyn.data.sampling import AXES
from medsyn.errors import CheckpointError, DatasetError, GeometryError, MedsynWarning, OutputError
from medsyn.inference.sliding_window import predict_volume_25d
from medsyn.inference.speedups import amp_dtype, compile_model, prepare_for_inference
from medsyn.io.image import image_stem, is_image_path, write_like
from medsyn.methods import METHODS, Method
from medsyn.training import checkpoint as ckpt
from medsyn.training.run_dir import RunDir


@dataclass
class LoadedRun:
    cfg: RunConfig
    method: Method
    norm: NormalizationState
    context: int
    checkpoint: Path
    device: torch.device


def load_run(run_dir: str | Path, which: str = "best", device: str = "auto") -> LoadedRun:
    """Rebuild the method from ``run_dir`` and load the ``best`` (or ``last``) checkpoint's weights."""
    from medsyn.training.engine import resolve_device

    run = RunDir(run_dir)
    cfg = run.read_config()
    spec = METHODS.get(cfg.method, key="method")
    norm = NormalizationState.from_dict(run.read_json("normalization.json"))
    ckpts = ckpt.list_checkpoints(run.checkpoints)
    if not ckpts:
        raise CheckpointError(f"{run.checkpoints}: no checkpoint; train first or resume the run")
    path = ckpts[-1]
    if which == "best" and (run.path / "best.json").is_file():
        name = run.read_json("best.json").get("checkpoint")
        if name and (run.checkpoints / name).is_dir():
            path = run.checkpoints / name
    try:
        ckpt.verify_checkpoint(path)
    except CheckpointError as e:
        good, _ = ckpt.latest_good(run.checkpoints)
        hint = f"; the newest good one is {good}" if good else ""
        raise CheckpointError(f"{e}{hint}") from None
    weights = ckpt.load_weights(path / "weights.safetensors")
    k = cfg.data.context_slices if spec.sample_kind == "2.5d" else 1
    method = spec.build(method_params(cfg), in_channels=len(cfg.data.source) * k, out_channels=1,
                        patch_size=tuple(cfg.data.patch_size))
    for name, net in method.networks.items():
        if name in weights:
            net.load_state_dict(weights[name])
    dev = resolve_device(device, key="--device")  # the machine predicting, not the one that trained
    method.to(dev).eval()
    return LoadedRun(cfg, method, norm, k, path, dev)


def inference_generator(method: Method, cfg: RunConfig, *, compiled: bool | None = None) -> torch.nn.Module:
    """The method's generator prepared for inference (``cfg.inference``): an eval-mode copy with
    BatchNorm folded into the convolutions and, on CPU, conv+ReLU fused (``fold_batchnorm``;
    ``prepare_for_inference``), optionally compiled (``compiled``,
    default ``cfg.inference.compile``). Prepare it once per set of weights; the method is unchanged."""
    G = method.networks[method.generator_name]
    inf = cfg.inference
    prepared = prepare_for_inference(G, fold=inf.fold_batchnorm)
    if inf.compile if compiled is None else compiled:
        prepared = compile_model(prepared)
    return prepared


def predict_case_arrays(method: Method, source: np.ndarray, cfg: RunConfig, device: torch.device, *,
                        context: int, confidence: bool = False, mask: np.ndarray | None = None,
                        generator: torch.nn.Module | None = None,
                        progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalised sources (M, X, Y, Z) → (prediction (X, Y, Z) in network range, confidence or None).

    ``mask`` (bool (X, Y, Z), the source foreground): with ``cfg.inference.region`` other than
    ``"full"``, only what the mask needs is computed and voxels outside it are 0 (the caller
    writes the target's background there). ``generator``: from :func:`inference_generator`;
    default: prepared here without compiling (validation, whose weights change every time).
    """
    was_training = method.training
    method.eval()
    inf = cfg.inference
    G = generator if generator is not None else inference_generator(method, cfg, compiled=False)

    def model(x: torch.Tensor) -> torch.Tensor:
        pred = G(x)
        if confidence:
            conf = method.confidence(x, pred)
            if conf is not None:
                return torch.cat([pred, conf], dim=1)
        return pred

    amp = amp_dtype(device, True) if inf.amp else method.runtime.amp_dtype
    use_mask = mask is not None and inf.region != "full"
    out = predict_volume_25d(model, source, slice_axis=AXES[cfg.data.slice_axis], context=context,
                             patch_size=tuple(cfg.data.patch_size), overlap=inf.overlap, blend=inf.blend,
                             batch_size=inf.batch_size, device=device, autocast_dtype=amp, progress=progress,
                             mask=mask if use_mask else None, crop_to_mask=inf.region == "foreground")
    method.train(was_training)
    conf_map = out[1] if out.shape[0] > 1 else None
    return out[0], conf_map


def collect_subjects(inputs: list[str | Path], sources: list[str]) -> list[Subject]:
    """INPUT... → subjects: a subject folder, a dataset folder (of subject folders), or single files."""
    subjects: list[Subject] = []
    single: list[Path] = []
    for inp in inputs:
        p = Path(inp)
        if not p.exists():
            raise DatasetError(f"{p}: input not found")
        if p.is_dir() and not is_image_path(p):
            s = read_subject_folder(p)
            if any(m in s.files for m in sources):
                subjects.append(s)
            else:
                ds = discover(p)
                subjects.extend(ds.subjects[i] for i in ds.ids())
        else:
            single.append(p)
    if single:
        if len(sources) != 1:
            raise DatasetError(f"{single[0]}: the run needs {len(sources)} source modalities ({', '.join(sources)}); "
                               "pass a subject folder holding one file per modality instead of single files")
        for f in single:
            stem = image_stem(f)
            sid = f.parent.name if stem == sources[0] else stem
            subjects.append(Subject(sid, {sources[0]: f}, folder=f.parent))
    ids = [s.id for s in subjects]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DatasetError(f"two inputs map to the same subject id {dup[0]!r}; outputs would collide — rename one")
    return subjects


def check_outputs(out_dir: Path, subjects: list[Subject], target: str, force: bool) -> None:
    """Refuse (before any work) to overwrite existing outputs unless ``force``."""
    if force:
        return
    existing = [out_dir / s.id / f"{target}.nii.gz" for s in subjects if (out_dir / s.id / f"{target}.nii.gz").exists()]
    if existing:
        raise OutputError(f"{existing[0]}: output exists ({len(existing)} in all); pass --force to overwrite, "
                          "--continue to skip the subjects already written, or choose another --out")


def with_inference_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """The run's config with ``--set inference.key=value`` overrides (validated); other sections
    describe the trained model and cannot change at prediction time."""
    from medsyn.config import apply_overrides, build_config, parse_override, to_dict
    from medsyn.errors import ConfigError

    for item in overrides:
        path, _ = parse_override(item)
        if path[0] != "inference":
            raise ConfigError(f"--set {item!r}: predict can change inference.* keys only (overlap, blend, batch_size, "
                              "mask_background); the other sections describe the trained model")
    return build_config(apply_overrides(to_dict(cfg), overrides)) if overrides else cfg


def predict_subjects(run: LoadedRun, subjects: list[Subject], out_dir: str | Path, *, force: bool = False,
                     write_confidence: bool = False, progress: Callable[[str, int, int], None] | None = None,
                     skip_existing: bool = False, failures: list[tuple[str, str]] | None = None) -> list[Path]:
    """Predict every subject into ``out_dir/<subject>/<target>.nii.gz``; return the files written.

    skip_existing: subjects whose output exists are skipped (resuming an interrupted batch).
    failures: when a list is given, a subject whose input is bad (DatasetError, GeometryError) is
    recorded there as (subject id, message) and the others are still predicted; otherwise the
    error is raised. Output errors (disk full, not writable) always stop the batch.
    """
    cfg, out_dir = run.cfg, Path(out_dir)
    target = cfg.data.target
    if skip_existing:
        subjects = [s for s in subjects if not (out_dir / s.id / f"{target}.nii.gz").exists()]
    check_outputs(out_dir, subjects, target, force)
    written: list[Path] = []
    generator = inference_generator(run.method, cfg)  # once for all subjects (compiling is slow)
    for s in subjects:
        try:
            written += _predict_one(run, s, out_dir, write_confidence, progress, generator)
        except (DatasetError, GeometryError) as e:  # this subject's input; an output problem stops all
            if failures is None:
                raise
            failures.append((s.id, str(e)))
    return written


def _predict_one(run: LoadedRun, s: Subject, out_dir: Path, write_confidence: bool,
                 progress: Callable[[str, int, int], None] | None, generator: Any) -> list[Path]:
    cfg, target, written = run.cfg, run.cfg.data.target, []
    tn = run.norm.target_normalizer()
    case: Case = load_case(s, list(cfg.data.source), None, mask=None, label=None, resample=cfg.data.resample,
                           require_target=False)
    _warn_out_of_distribution(run, case)
    nc = normalize_case(case, run.norm, cfg.data.source)
    cb = (lambda d, t, sid=s.id: progress(sid, d, t)) if progress else None
    # the foreground-aware region needs the mask that is written as background below
    mask = case.mask if cfg.inference.mask_background else None
    pred_n, conf = predict_case_arrays(run.method, nc.source, cfg, run.device, context=run.context,
                                       confidence=write_confidence, mask=mask, generator=generator, progress=cb)
    pred = tn.inverse(pred_n)
    # outside the foreground the target is background (0 for skull-stripped MR, air for CT):
    # write the training targets' background value there rather than the network's guess
    if cfg.inference.mask_background:
        pred[~case.mask] = run.norm.target_background
    dtype = np.dtype(run.norm.target_dtype)
    written.append(write_like(case.reference, pred, out_dir / s.id / f"{target}.nii.gz", dtype=dtype))
    if conf is not None:
        written.append(write_like(case.reference, conf, out_dir / s.id / f"{target}_confidence.nii.gz"))
    return written


def _warn_out_of_distribution(run: LoadedRun, case: Case) -> None:
    stats = run.norm.train_stats
    if not stats:
        return
    for m, v in case.sources.items():
        s = stats.get(m)
        if not s:
            continue
        sp = np.asarray(v.spacing)
        if np.any(np.abs(sp - np.asarray(s["spacing"])) > 0.5 * np.asarray(s["spacing"])):
            warnings.warn(f"{v.path}: voxel spacing {_mm(sp)} mm is far from the training data's "
                          f"{_mm(s['spacing'])} mm; resample the input for reliable results", MedsynWarning, stacklevel=2)
        vals = v.array[case.mask].astype(np.float64)
        med = float(np.median(vals)) if vals.size else 0.0
        lo, hi = s["median_range"]
        # MR scales differ between scanners by small factors, not by orders of magnitude
        if lo > 0 and (med < lo / OOD_FACTOR or med > hi * OOD_FACTOR):
            warnings.warn(f"{v.path}: median foreground intensity {med:.4g} is far outside the training data's "
                          f"[{lo:.4g}, {hi:.4g}] (more than {OOD_FACTOR:g}×); is this the right modality ({m})?",
                          MedsynWarning, stacklevel=2)


OOD_FACTOR = 4.0


def _mm(spacing) -> str:
    """(1.0, 1.0, 2.5) → '1 × 1 × 2.5' (plain numbers, not numpy reprs)."""
    return " × ".join(f"{float(x):.3g}" for x in spacing)
