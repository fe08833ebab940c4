"""Building a synthetic data set from a trained Qu et al. pipeline (Sec. 2.8, Fig. 5).

For every synthetic slice:

1. ``code_{f,g} ~ N(0, 1)`` → ``DC_f`` → structure map ``f_g`` (thresholded at 0.5) → ``MASK`` →
   brain mask ``mask_g`` (1 outside, thresholded at 0.5).
2. **Filter 1, Algorithm 3**: keep ``f_g`` only if the filled-contour mask agrees with
   ``mask_g`` (MAE < ``filter_mae``, 0.05); else draw new noise.
3. A random real lesion label (``--labels`` data set, slices in ``params.slice_range``), randomly
   scaled / rotated / translated / flipped (Sec. 2.8), accepted only if it lies inside
   ``mask_g`` (Sec. 2.5: ``mask · label = 0``); ``params.label_tries`` labels per map.
4. ``fuse(f_g, label)`` → ``FE`` → ``DC(·, i)`` for every modality; intensities outside the
   brain are set to 0 (MASK's purpose, Sec. 2.3).
5. **Filter 2**: the real-trained segmenter (stage ``segmenter``) segments the case; keep it
   when the whole-lesion Dice with the input label is ≥ ``min_dice`` (0.95).

Each synthetic subject is a stack of ``slices_per_case`` such slices (default 1: the paper's
samples are 2D images), written in medsyn's data-set layout — one NIfTI per modality (float32,
the networks' [0, 1] range, background 0), ``seg`` (the input label), ``brainmask`` (1 − ``mask_g``)
and ``structure`` (``f_g``, uint8: the map the case was generated from, Fig. 7) — with a
proper geometry: the in-plane grid and spacing of the label's source volume (shifted by the
pad/crop to the network grid) and its axial position. ``generate.json`` records the seeds, the
filters and every rejection count. Nothing is overwritten: ``out`` must be new or empty, each
subject folder is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medsyn import __version__
from medsyn.config import config_hash
from medsyn.data.dataset import Dataset, discover
from medsyn.data.pipeline import open_dataset
from medsyn.data.masks import as_mask, compute_mask
from medsyn.data.qu_slices import fit_to_size, slice_indices, standardize_image
from medsyn.data.structure import (
    LabelAugmentConfig,
    augment_label,
    check_lesion_label,
    filter_structure_map,
)
from medsyn.errors import ConfigError, DatasetError, MedsynError, OutputError
from medsyn.io.image import atomic_write_bytes, read_image, write_nifti
from medsyn.methods.qu2023 import QuConfig, segment_views
from medsyn.pipelines.qu import Holdout, load_stage, read_holdout, read_pipeline, stage_checkpoint

RECORD_FILE = "generate.json"
#: the generated structure map f_g, the generator's input (Fig. 7), written beside the modalities
STRUCTURE_FILE = "structure"
#: (choice) in-plane spacing of the labels may differ from the training data's by this fraction
SPACING_TOLERANCE = 0.05


class GenerationError(MedsynError):
    """No synthetic slice passed the filters within ``max_attempts`` (an under-trained model, or
    lesion labels that fit no generated brain)."""


@dataclass
class LabelPool:
    """Real lesion-label slices on the network grid (Sec. 2.8's label set, before augmentation).

    labels: ``(K, H, W)`` int16, every slice with at least one lesion pixel. origin: ``"subject:k"``
    of each. affines: canonical voxel → world affine of each slice on the network grid (its
    volume's affine shifted by the pad/crop offset and the slice index). dropped_outside: lesion
    slices left out because the lesion reaches outside their own subject's brain.
    """

    root: Path
    labels: np.ndarray
    origin: list[str]
    affines: list[np.ndarray]
    dropped_outside: int = 0
    n_subjects: int = 0
    excluded_subjects: list[str] = field(default_factory=list)
    excluded_slices: int = 0


def _translate(a: float, b: float, c: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = [a, b, c]
    return t


def load_label_pool(root: str | Path | Dataset, p: QuConfig, slice_size: list[int],
                    spacing_mm: list[float] | None = None, holdout: Holdout | None = None) -> LabelPool:
    """The lesion slices of every subject of ``root`` that has a ``params.label`` file, except
    what the run never trained on (``holdout``): its test and validation subjects and its
    held-out test slices (and gap), matched by subject id — so a test subject's lesions never
    become labels of synthetic training data (docs/qu.md, "Held-out test data").

    When a subject also has a ``brainmask`` or one of ``params.modalities``, lesion slices that
    reach outside its brain are dropped (they could never be placed inside a brain either).
    Raises DatasetError when no subject has a label, none has a lesion slice in the range, the
    spacing differs from the training data's, or every lesion lies outside its brain.
    """
    ds = root if isinstance(root, Dataset) else discover(root)
    with_label = [sid for sid in ds.ids() if p.label in ds.subjects[sid].files]
    excluded_subjects = [sid for sid in with_label if holdout is not None and sid in holdout.unseen_subjects]
    if excluded_subjects and len(excluded_subjects) == len(with_label):
        raise DatasetError(f"{ds.root}: every labelled subject ({', '.join(excluded_subjects[:5])}) is a test or "
                           "validation subject of the run; the label pool may only hold labels of training subjects "
                           "— pass --labels with training subjects' labels (or omit it: the run's training split)")
    with_label = [sid for sid in with_label if sid not in excluded_subjects]
    excluded_slices = 0
    if not with_label:
        raise DatasetError(f"{ds.root}: no subject has a {p.label!r} label file (subjects: {', '.join(ds.ids()[:5])}); "
                           f"--labels needs a data set with lesion labels ({p.label}.nii.gz per subject)")
    labels, origin, affines, dropped = [], [], [], 0
    for sid in with_label:
        s = ds.subjects[sid]
        vol = read_image(s.files[p.label])
        lab = np.rint(np.asarray(vol.array, dtype=np.float32)).astype(np.int16)
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi > p.n_classes - 1:
            raise DatasetError(f"{s.files[p.label]}: label values span {lo}..{hi}, but the run was trained with "
                               f"params.n_classes = {p.n_classes} (0..{p.n_classes - 1})")
        sp = vol.spacing
        if spacing_mm is not None and any(abs(a - b) > SPACING_TOLERANCE * b for a, b in zip(sp[:2], spacing_mm)):
            raise DatasetError(f"{s.files[p.label]}: in-plane spacing {sp[0]:.3g}×{sp[1]:.3g} mm differs from the "
                               f"training data's {spacing_mm[0]:.3g}×{spacing_mm[1]:.3g} mm; resample the labels onto "
                               "the training grid first")
        brain = None
        mask_file = next((s.files[m] for m in ("brainmask", "mask") if m in s.files), None)
        image_file = next((s.files[m] for m in p.modalities if m in s.files), None)
        if mask_file is not None:
            brain = as_mask(read_image(mask_file).array, str(mask_file))
        elif image_file is not None:
            brain = compute_mask(read_image(image_file).array)
        if brain is not None and brain.shape != lab.shape:
            raise DatasetError(f"{s.files[p.label]}: label grid {lab.shape} differs from its images' {brain.shape}")
        for k in slice_indices(lab.shape[2], sp[2], p.slice_range):
            sl = lab[:, :, k]
            if not (sl > 0).any():
                continue
            if holdout is not None and holdout.never_trained(sid, k):
                excluded_slices += 1
                continue
            if brain is not None and ((sl > 0) & ~brain[:, :, k]).any():
                dropped += 1
                continue
            fitted, (o0, o1) = fit_to_size(sl, slice_size)
            if not (fitted > 0).any():
                continue
            labels.append(fitted)
            origin.append(f"{sid}:{k}")
            affines.append(vol.affine @ _translate(o0, o1, k))
    if not labels:
        if dropped:
            raise DatasetError(f"{ds.root}: all {dropped} lesion label slices lie (partly) outside their subject's brain "
                               f"mask — labels outside every mask cannot be placed in a generated brain (Sec. 2.5); "
                               "check that the labels belong to these images")
        raise DatasetError(f"{ds.root}: no label slice with a lesion in params.slice_range {p.slice_range} mm "
                           f"({len(with_label)} subject(s) with {p.label!r})")
    return LabelPool(ds.root, np.stack(labels).astype(np.int16), origin, affines, dropped, len(with_label),
                     excluded_subjects, excluded_slices)


def lesion_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Whole-lesion Dice of two class maps (``> 0``); 1.0 when both are empty."""
    a, b = pred > 0, target > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * float((a & b).sum()) / denom


def final_check(slices: list[dict[str, Any]], min_dice: float, final_dice: float) -> dict[str, Any]:
    """Sec. 2.8's check of the finished set: segmented by the real-trained segmenter(s), its mean
    Dice with its own labels (over slices and segmenter views) must reach ``final_dice`` (0.99).

    It reuses each accepted slice's filter Dice (the same eval-mode segmenters, so the same
    numbers). Only run when the Dice filter is on: an unfiltered set (``--min-dice 0``, Table 1)
    is not meant to pass it.
    """
    if min_dice <= 0 or final_dice <= 0:
        return {"enabled": False, "threshold": final_dice}
    per_slice = [float(np.mean(s["dice_per_view"])) for s in slices]
    dice = float(np.mean(per_slice))
    return {"enabled": True, "threshold": final_dice, "dice": dice, "passed": dice >= final_dice,
            "min_slice_dice": float(min(per_slice)), "slices": len(per_slice)}


@dataclass
class GenerateResult:
    out: Path
    subjects: list[str]
    record: dict[str, Any] = field(default_factory=dict)


class _Synthesiser:
    """The networks of a trained run and the two filters; one call = one accepted slice."""

    def __init__(self, run: Path, p: QuConfig, slice_size: list[int], pool: LabelPool, *, filter_mae: float,
                 min_dice: float, max_attempts: int, device: torch.device):
        self.p, self.pool, self.device = p, pool, device
        self.h, self.w = slice_size
        self.filter_mae, self.min_dice, self.max_attempts = filter_mae, min_dice, max_attempts
        structure = load_stage(run, "structure", device)
        self.DC_f, self.MASK = structure.networks["DC_f"], structure.networks["MASK"]
        self.gen = load_stage(run, "generation", device)
        self.seg = load_stage(run, "segmenter", device).networks["S"] if min_dice > 0 else None
        self.aug = LabelAugmentConfig(tuple(p.label_scale), tuple(p.label_rotation_deg), p.label_translation,
                                      p.label_flip_prob)
        k = 2 ** p.n_down
        self.code_shape = (1, p.structure_code_channels, self.h // k, self.w // k)
        self.counts = {"attempts": 0, "structure_rejected": 0, "label_rejected": 0, "dice_rejected": 0, "accepted": 0}

    @torch.no_grad()
    def __call__(self, rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
        p, c = self.p, self.counts
        local = {"structure": 0, "label": 0, "dice": 0}
        for attempt in range(1, self.max_attempts + 1):
            c["attempts"] += 1
            code_f_g = torch.randn(self.code_shape, generator=gen).to(self.device)  # code_{f,g} ~ N(0, 1)
            f_g = (self.DC_f(code_f_g) > 0.5).float()
            mask_g = (self.MASK(f_g) > 0.5).float()  # Alg. 2 convention: 1 outside the brain
            f_np, mask_np = f_g[0, 0].cpu().numpy(), mask_g[0, 0].cpu().numpy()
            mae = None
            if self.filter_mae < 1.0:  # Algorithm 3 (MAE ≤ 1 always: a threshold ≥ 1 switches it off)
                r = filter_structure_map(f_np, mask_np, mae_threshold=self.filter_mae)
                mae = r.mae
                if not r.accepted:
                    c["structure_rejected"] += 1
                    local["structure"] += 1
                    continue
            label, src = None, None
            for _ in range(p.label_tries):  # Sec. 2.5/2.8: a random augmented label inside the brain
                j = int(rng.integers(len(self.pool.labels)))
                cand = augment_label(self.pool.labels[j], rng, self.aug)
                if check_lesion_label(cand, mask_np, require_lesion=True):
                    label, src = cand, j
                    break
            if label is None:
                c["label_rejected"] += 1
                local["label"] += 1
                continue
            label_t = torch.from_numpy(label.astype(np.int64))[None, None].to(self.device)
            _, x_g = self.gen.generate(f_g, label_t)
            brain = 1.0 - mask_np
            images = np.stack([xg[0, 0].cpu().numpy() * brain for xg in x_g]).astype(np.float32)
            dice, dices = None, None
            if self.seg is not None:  # filter 2: the real-trained segmenter(s) must find the input label
                dices = self.segment_dice(images, brain > 0, label)
                dice = min(dices)  # per modality (Sec. 2.9): every modality must show the lesion
                if dice < self.min_dice:
                    c["dice_rejected"] += 1
                    local["dice"] += 1
                    continue
            c["accepted"] += 1
            return {"images": images, "label": label.astype(np.int16), "brain": (brain > 0).astype(np.uint8),
                    "structure": (f_np > 0.5).astype(np.uint8), "source": src,
                    "record": {"label_source": self.pool.origin[src], "attempts": attempt,
                               "algorithm3_mae": mae, "dice": dice, "dice_per_view": dices}}
        raise GenerationError(self._failure(local))

    @torch.no_grad()
    def segment_dice(self, images: np.ndarray, brain: np.ndarray, label: np.ndarray) -> list[float]:
        """Whole-lesion Dice of each segmenter view with ``label``: one per modality for the
        per-modality segmenters (Sec. 2.9), one for the multichannel one. ``images`` ``(M, H, W)``
        in the network range, standardised here as real slices are."""
        x = np.stack([standardize_image(im, brain, self.p.standardize_clip) for im in images])
        views = segment_views(self.seg, torch.from_numpy(x)[None].to(self.device))[0]  # (V, C, H, W)
        return [lesion_dice(v.argmax(0).cpu().numpy(), label) for v in views]

    def _failure(self, local: dict[str, int]) -> str:
        n = self.max_attempts
        passed3 = n - local["structure"]
        if local["label"] and local["label"] == passed3:
            return (f"none of the {len(self.pool.labels)} lesion label slices from {self.pool.root} (randomly augmented, "
                    f"{self.p.label_tries} tries per map) fits inside any of the {passed3} generated brain masks "
                    "(Sec. 2.5: mask·label must be 0): the labels lie outside every mask. Use labels drawn on brains of "
                    "the training grid, or train the structure stage longer")
        if local["structure"] == n:
            return (f"Algorithm 3 rejected all {n} generated structure maps (MAE ≥ {self.filter_mae}): the structure "
                    "stage is under-trained; train it longer or relax --filter-mae (≥ 1 switches the filter off)")
        return (f"no synthetic slice passed the filters in {n} attempts ({local['structure']} structure maps rejected "
                f"by Algorithm 3, {local['label']} without a fitting label, {local['dice']} with segmenter Dice < "
                f"{self.min_dice}); train longer, or relax --filter-mae / --min-dice (0 switches the Dice filter off)")


def _write_subject(out: Path, sid: str, p: QuConfig, slices: list[dict[str, Any]], affine: np.ndarray) -> Path:
    final = out / sid
    if final.exists():
        raise OutputError(f"{final}: exists; medsyn generate never overwrites — choose a new --out")
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".tmp-{sid}-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a data set folder is readable like any other
        for i, m in enumerate(p.modalities):
            write_nifti(np.stack([s["images"][i] for s in slices], axis=-1), affine, tmp / f"{m}.nii.gz", np.float32)
        write_nifti(np.stack([s["label"] for s in slices], axis=-1), affine, tmp / f"{p.label}.nii.gz", np.uint8)
        write_nifti(np.stack([s["brain"] for s in slices], axis=-1), affine, tmp / "brainmask.nii.gz", np.uint8)
        write_nifti(np.stack([s["structure"] for s in slices], axis=-1), affine, tmp / f"{STRUCTURE_FILE}.nii.gz",
                    np.uint8)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def generate(run_dir: str | Path, n: int, labels: str | Path | None, out: str | Path, *, seed: int = 0,
             slices_per_case: int = 1, filter_mae: float | None = None, min_dice: float | None = None,
             final_dice: float | None = None, max_attempts: int | None = None, device: str = "auto",
             progress: Callable[[int, int], None] | None = None) -> GenerateResult:
    """Write ``n`` synthetic subjects of ``slices_per_case`` slices into the new folder ``out``.

    ``filter_mae`` / ``min_dice`` / ``max_attempts`` default to the run's ``params``
    (0.05 / 0.95 / 200). ``labels`` is a data set folder (or ``sample``) with lesion labels;
    None: the run's own data set. Either way only labels the run trained on are used
    (:func:`load_label_pool`).
    Same run, labels, seed and options → identical files. Returns the subject ids and the record
    written to ``out/generate.json``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--n: got {n!r}; give the number of synthetic subjects to write, ≥ 1")
    if slices_per_case < 1:
        raise ConfigError(f"--slices: got {slices_per_case}; expected ≥ 1 slices per synthetic subject")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: exists and is not an empty folder; medsyn generate never overwrites — choose a new --out")
    run = Path(run_dir)
    cfg, p, state = read_pipeline(run)
    filter_mae = p.filter_mae if filter_mae is None else float(filter_mae)
    min_dice = p.min_dice if min_dice is None else float(min_dice)
    final_dice = p.final_dice if final_dice is None else float(final_dice)
    max_attempts = p.max_attempts if max_attempts is None else int(max_attempts)
    if filter_mae <= 0 or not 0 <= min_dice <= 1 or not 0 <= final_dice <= 1 or max_attempts < 1:
        raise ConfigError(f"--filter-mae {filter_mae} / --min-dice {min_dice} / --final-dice {final_dice} / "
                          f"--max-attempts {max_attempts}: expected filter-mae > 0, min-dice and final-dice in [0, 1], "
                          "max-attempts ≥ 1")
    for stage in ("structure", "generation") + (("segmenter",) if min_dice > 0 else ()):
        try:
            stage_checkpoint(run, stage)
        except MedsynError as e:
            hint = "; or pass --min-dice 0 to skip the segmenter filter" if stage == "segmenter" else ""
            raise type(e)(f"{e}{hint}") from None
    from medsyn.training.engine import resolve_device

    dev = resolve_device(device)
    size = list(state["slice_size"])
    pool = load_label_pool(open_dataset(cfg.data) if labels is None else labels, p, size,
                           state.get("in_plane_spacing_mm"), read_holdout(run))
    synth = _Synthesiser(run, p, size, pool, filter_mae=filter_mae, min_dice=min_dice, max_attempts=max_attempts,
                         device=dev)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "medsyn_version": __version__, "paper": "Qu et al. Sec. 2.8", "run_dir": str(run.resolve()),
        "run_config_hash": config_hash(cfg), "checkpoints": {s: stage_checkpoint(run, s).name for s in
                                                              ("structure", "generation", "segmenter")
                                                              if s != "segmenter" or min_dice > 0},
        "labels": str(pool.root), "label_slices": len(pool.labels), "label_slices_dropped_outside_brain":
        pool.dropped_outside, "label_subjects_excluded_unseen": pool.excluded_subjects,
        "label_slices_excluded_held_out": pool.excluded_slices, "seed": seed, "n": n, "slices_per_case": slices_per_case,
        "modalities": list(p.modalities), "label": p.label, "structure": STRUCTURE_FILE,
        "intensity": "network range [0, 1], 0 outside the brain (float32)",
        "filters": {"algorithm3": {"enabled": filter_mae < 1.0, "mae_threshold": filter_mae},
                    "segmenter_dice": {"enabled": min_dice > 0, "min_dice": min_dice,
                                       "segmenter_input": p.segmenter_input,
                                       "rule": "every modality's segmenter" if p.segmenter_input == "per-modality"
                                       else "the multichannel segmenter"},
                    "label_inside_mask": {"label_tries_per_map": p.label_tries}},
        "max_attempts_per_slice": max_attempts, "counts": synth.counts, "subjects": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    ids, all_slices = [], []
    for i in range(n):
        case_seed = int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] % (2**63))
        rng = np.random.default_rng(case_seed)
        tgen = torch.Generator().manual_seed(case_seed)
        slices = [synth(rng, tgen) for _ in range(slices_per_case)]
        all_slices.append(slices)
        sid = f"synth-{i:05d}"
        _write_subject(out, sid, p, slices, pool.affines[slices[0]["source"]])
        ids.append(sid)
        record["subjects"].append({"id": sid, "seed": case_seed, "slices": [s["record"] for s in slices]})
        atomic_write_bytes(out / RECORD_FILE, json.dumps(record, indent=1, default=float).encode())
        if progress is not None:
            progress(i + 1, n)
    record["final_check"] = final_check([s["record"] for sub in all_slices for s in sub], min_dice, final_dice)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    atomic_write_bytes(out / RECORD_FILE, json.dumps(record, indent=1, default=float).encode())
    return GenerateResult(out, ids, record)
