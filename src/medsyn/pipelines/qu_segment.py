"""Does synthetic data help a lesion segmenter? Qu et al.'s Tables 1 and 2 (Sec. 2.9, 3.5–3.6, 4.1).

**Table 2** (:func:`run_table2`): train the lesion segmenter on real slices only, synthetic
slices only, real + synthetic mixes with the paper's three strategies — random mixing,
synthetic-then-real (pre-train, then fine-tune) and real-then-synthetic — and, for comparison,
real + traditionally augmented slices (Sec. 3.4: random scale, rotation, translation, flip);
evaluate Dice and MSE on real test slices. Amounts are multiples of ``R``, the number of real
training slices, exactly as the paper's rows (``15070 × 0.5`` …): :data:`TABLE2`.

**Table 1** (:func:`run_table1`): a segmenter trained on real slices only, tested on the real
test slices and on synthetic data sets (one per lesion-supervision variant, generated without
the segmenter filter, Sec. 3.5), the same number of slices each.

Conventions (the paper gives names, not definitions; docs/qu.md):

* Model and loss: :func:`medsyn.methods.qu2023.build_segmenter` (one per modality, Sec. 2.9, or all modalities as channels)
  with ``params.seg_loss`` (Sec. 2.9's ``loss_l``), Adam as Sec. 3.1, batch 1.
* Budget: ``epochs`` passes over each phase's training set (Sec. 3.6: 100 epochs; a
  sequential strategy has two phases, each its own epochs), or a fixed total ``steps`` split
  over the phases in proportion to their sizes (for quick CPU runs).
* Dice: whole lesion (``label > 0``), per 2D slice, then averaged over slices (Sec. 3.1:
  "the mean of the 2D image results"); a slice where both prediction and truth are empty scores
  1. Per-class Dice is averaged over the slices where the class appears in either.
  MSE: mean squared difference between the one-hot label and the softmax probabilities, per
  slice, averaged.
* Real data: exactly what the pipeline run held out of every stage (``pipeline.json``'s
  ``holdout``, :class:`medsyn.pipelines.qu.Holdout`): the labelled subjects of the ``test``
  split (subject-level, Sec. 3.2's 9:1), or — when the split has none (the bundled sample has
  one labelled case) — the lowest ``params.slice_holdout`` of each labelled training subject's
  slice range, which the generators, the label pool and the run's segmenter never saw; the
  tables say so (adjacent slices of one brain are not independent, so those numbers are
  optimistic). A run that held nothing out is refused. Every training pool is checked against
  the hold-out before training, and a synthetic set's label sources (``generate.json``) too.
* Repeats: Sec. 3.1 trains every experiment four times and keeps the best *on the test set*;
  ``repeats`` does the same, and the JSON keeps every repeat and the mean.
* Examples (Figs. 9–10): ``examples`` test slices — those with the largest lesions — are kept
  with every segmenter's predicted label maps in ``table<k>_examples.npz``
  (:func:`write_examples`); ``medsyn qu figure`` draws them.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from medsyn import __version__
from medsyn.data.dataset import discover
from medsyn.data.pipeline import make_splits, open_dataset
from medsyn.data.qu_slices import QuSlices, Rows, concat_rows, load_slices, warp_slice
from medsyn.data.structure import LabelAugmentConfig, random_label_affine
from medsyn.errors import ConfigError, DatasetError, OutputError
from medsyn.io.image import atomic_write_bytes
from medsyn.methods.qu2023 import QuConfig, adam, build_segmenter, segment_views, segmenter_step, slice_store
from medsyn.pipelines.qu import Holdout, load_stage, read_holdout, read_pipeline
from medsyn.pipelines.qu_generate import lesion_dice

Mixing = Literal["none", "random", "syn-then-real", "real-then-syn"]
MIXING_NAMES = {"none": "none", "random": "random mix", "syn-then-real": "synthetic → real",
                "real-then-syn": "real → synthetic"}


@dataclass(frozen=True)
class Experiment:
    """One row of Table 2: amounts as multiples of R (the real training slices) and the mixing."""

    id: int
    real: float
    synthetic: float
    augmented: float
    mixing: Mixing


#: Qu et al. Table 2, in the paper's order (row numbers are the paper's).
TABLE2: dict[int, Experiment] = {e.id: e for e in (
    Experiment(1, 1.0, 0.0, 0.0, "none"), Experiment(31, 0.5, 0.0, 0.0, "none"),
    Experiment(2, 0.0, 1.0, 0.0, "none"), Experiment(3, 0.0, 2.0, 0.0, "random"),
    Experiment(4, 0.0, 3.0, 0.0, "random"),
    Experiment(7, 0.1, 1.0, 0.0, "syn-then-real"), Experiment(8, 0.1, 2.0, 0.0, "syn-then-real"),
    Experiment(9, 0.1, 3.0, 0.0, "syn-then-real"),
    Experiment(13, 0.2, 0.8, 0.0, "random"), Experiment(12, 0.5, 0.5, 0.0, "random"),
    Experiment(14, 0.8, 0.2, 0.0, "random"),
    Experiment(32, 1.0, 0.2, 0.0, "random"), Experiment(33, 1.0, 0.5, 0.0, "random"),
    Experiment(34, 1.0, 0.8, 0.0, "random"), Experiment(15, 1.0, 1.0, 0.0, "random"),
    Experiment(16, 1.0, 1.0, 0.0, "real-then-syn"), Experiment(17, 1.0, 1.0, 0.0, "syn-then-real"),
    Experiment(18, 1.0, 2.0, 0.0, "random"), Experiment(19, 1.0, 3.0, 0.0, "random"),
    Experiment(35, 1.0, 0.0, 0.2, "random"), Experiment(36, 1.0, 0.0, 0.5, "random"),
    Experiment(37, 1.0, 0.0, 0.8, "random"), Experiment(22, 1.0, 0.0, 1.0, "random"),
    Experiment(23, 1.0, 0.0, 2.0, "random"), Experiment(24, 1.0, 0.0, 3.0, "random"),
)}
#: the paper's results (MSE, Dice), printed beside ours for reference
PAPER_TABLE2 = {1: (0.026, 0.915), 31: (0.032, 0.902), 2: (0.205, 0.708), 3: (0.206, 0.736), 4: (0.205, 0.754),
                7: (0.031, 0.908), 8: (0.028, 0.907), 9: (0.030, 0.907), 13: (0.041, 0.850), 12: (0.031, 0.904),
                14: (0.024, 0.935), 32: (0.025, 0.921), 33: (0.023, 0.939), 34: (0.026, 0.916), 15: (0.027, 0.913),
                16: (0.195, 0.795), 17: (0.021, 0.940), 18: (0.033, 0.901), 19: (0.034, 0.897), 35: (0.027, 0.911),
                36: (0.025, 0.927), 37: (0.026, 0.920), 22: (0.026, 0.915), 23: (0.032, 0.898), 24: (0.036, 0.885)}
PAPER_TABLE1 = {"real": (0.026, 0.915), "1SEG": (0.053, 0.741), "1ECL+4DCL": (0.055, 0.808), "4SEG": (0.043, 0.838)}
#: (choice) test slices kept with every segmenter's predictions for the figures (Figs. 9–10)
EXAMPLES = 4


def parse_experiments(spec: str | Sequence[int] | None) -> list[int]:
    """``"all"`` / None → every Table 2 row; ``"1,2,15"`` → those rows (unknown ids raise ConfigError)."""
    if spec is None or spec == "all":
        return list(TABLE2)
    ids = [int(s) for s in spec.split(",") if s.strip()] if isinstance(spec, str) else [int(s) for s in spec]
    bad = [i for i in ids if i not in TABLE2]
    if bad or not ids:
        raise ConfigError(f"--experiments: unknown Table 2 row(s) {bad or spec}; known: {', '.join(map(str, TABLE2))} or all")
    return ids


# --------------------------------------------------------------------------- data


@dataclass
class Pool:
    """Training or test slices: ``images`` ``(N, M, H, W)`` standardised, ``labels`` ``(N, H, W)``
    — arrays, or lazy :class:`~medsyn.data.qu_slices.Rows` read one slice at a time (memory
    maps of the slice store, augmented slices computed on read); ``origin``: ``"subject:k"`` of
    each real slice (of its source slice for an augmented one), ``"synthetic:<subject>:k"`` for a
    synthetic one — what the leak checks read."""

    images: np.ndarray | Rows
    labels: np.ndarray | Rows
    origin: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @staticmethod
    def of(s: QuSlices, idx: Sequence[int] | np.ndarray | None = None, prefix: str = "") -> "Pool":
        idx = np.arange(len(s)) if idx is None else np.asarray(idx, dtype=np.int64)
        return Pool(s.images[idx], s.labels[idx], [f"{prefix}{s.subjects[i]}:{int(s.index[i])}" for i in idx])

    def take(self, idx: Sequence[int] | np.ndarray | slice) -> "Pool":
        if isinstance(idx, slice):
            return Pool(self.images[idx], self.labels[idx], self.origin[idx])
        idx = np.asarray(idx, dtype=np.int64)
        return Pool(self.images[idx], self.labels[idx], [self.origin[i] for i in idx])

    @staticmethod
    def concat(pools: Sequence["Pool"]) -> "Pool":
        pools = [q for q in pools if len(q)]
        return Pool(concat_rows([q.images for q in pools]), concat_rows([q.labels for q in pools]),
                    [o for q in pools for o in q.origin])


def _origin_key(origin: str) -> tuple[str, int]:
    sid, k = origin.rsplit(":", 1)
    return sid, int(k)


def check_no_leak(pool: Pool, holdout: Holdout, what: str) -> None:
    """Raise DatasetError when a slice of ``pool`` is one the run holds out (a test or validation
    subject, or a held-out test slice or its gap). Synthetic slices are checked through their
    label sources (:func:`check_synthetic_labels`)."""
    bad = [o for o in pool.origin if not o.startswith("synthetic:") and holdout.never_trained(*_origin_key(o))]
    if bad:
        raise DatasetError(f"{what}: {len(bad)} slice(s) of held-out test data ({', '.join(bad[:3])}) would be trained "
                           "on; this is a bug — please report it")


def check_synthetic_labels(root: str | Path, holdout: Holdout) -> dict[str, Any]:
    """The label sources of a synthetic data set (``generate.json``) must all be slices the run
    trained on: a synthetic slice drawn around a test subject's lesion is test data in disguise.
    Raises DatasetError naming the first offending subject; returns what was checked."""
    rec_path = Path(root) / "generate.json"
    if not rec_path.is_file():
        return {"checked": False, "reason": f"{rec_path} missing: label sources unknown"}
    rec = json.loads(rec_path.read_text())
    bad = [(s["id"], sl["label_source"]) for s in rec.get("subjects", []) for sl in s.get("slices", [])
           if holdout.never_trained(*_origin_key(sl["label_source"]))]
    if bad:
        raise DatasetError(f"{rec_path}: {len(bad)} synthetic slice(s) were generated from lesion labels of held-out "
                           f"test data (e.g. {bad[0][0]} from {bad[0][1]}); the segmenter would train on test labels. "
                           "Regenerate the set with this medsyn (`medsyn generate RUN` uses the run's training labels "
                           "only)")
    return {"checked": True, "slices": sum(len(s.get("slices", [])) for s in rec.get("subjects", []))}


def real_data(run: str | Path) -> tuple[Pool, Pool, dict[str, Any]]:
    """Real training and test slices of a pipeline run's data set (see the module docstring).

    The test slices are exactly what the run held out (:class:`~medsyn.pipelines.qu.Holdout`);
    the training slices are the labelled training subjects' other slices. A run with nothing held
    out is refused: its generators trained on every labelled slice.
    """
    cfg, p, state = read_pipeline(run)
    holdout = read_holdout(run)
    ds = open_dataset(cfg.data)
    splits = state["splits"]
    train_ids = [i for i in splits["train"] if p.label in ds.subjects[i].files]
    size = list(state["slice_size"])
    kw = dict(label=p.label, slice_range_mm=p.slice_range, slice_size=size, n_classes=p.n_classes,
              labelled_only=True, clip=p.standardize_clip, store=slice_store(p))
    if holdout.kind == "none":
        raise DatasetError(f"{Path(run)}: the run holds no real test data out — its split has no labelled test subject "
                           "and its stages trained on every labelled slice (params.slice_holdout = 0, or a run trained "
                           "before medsyn held slices out), so no real slice is unseen by its generators. Give the data "
                           "set a labelled test subject (data.test / data.test_fraction) or retrain with "
                           "params.slice_holdout > 0")
    if not train_ids:
        raise DatasetError(f"{ds.root}: no training subject of the run has a {p.label!r} label file; the segmentation "
                           "experiments need labelled real training subjects")
    if holdout.kind == "subjects":
        tr = load_slices(ds, train_ids, p.modalities, **kw)
        te = load_slices(ds, holdout.test_subjects, p.modalities, **kw)
        info = {"split": "subjects", "train_subjects": train_ids, "test_subjects": holdout.test_subjects}
    else:
        tr = load_slices(ds, train_ids, p.modalities, exclude=holdout.excluded, **kw)
        te = load_slices(ds, list(holdout.test_slices), p.modalities, include=holdout.test_slices, **kw)
        info = {"split": "slices", "subjects": list(holdout.test_slices), "test_fraction": p.slice_holdout,
                "warning": "no labelled test subject: the test slices are the lowest "
                           f"{p.slice_holdout:.0%} of each labelled training subject's slice range, held out of every "
                           "generator stage, the label pool and the segmenters (one slice gap); they are unseen, but "
                           "neighbouring slices of the same brain are not independent, so these numbers are optimistic"}
    train, test = Pool.of(tr), Pool.of(te)
    check_no_leak(train, holdout, f"{Path(run)}: real training slices")
    return train, test, info


def synthetic_data(root: str | Path, p: QuConfig, slice_size: list[int], limit: int | None = None) -> Pool:
    """The labelled slices of a synthetic data set, subject by subject in id order (every slice
    of a subject; intensities re-standardised), stopping once ``limit`` slices are loaded — the
    first ``limit`` cases, so "synthetic × 2" ⊂ "synthetic × 3" and memory stays what is used."""
    ds = discover(root)
    kw = dict(label=p.label, slice_range_mm=None, slice_size=slice_size, n_classes=p.n_classes, labelled_only=True,
              clip=p.standardize_clip, store=slice_store(p))
    missing = [sid for sid in ds.ids() if any(m not in ds.subjects[sid].files for m in p.modalities + [p.label])]
    if missing:
        s = ds.subjects[missing[0]]
        lacks = [m for m in p.modalities + [p.label] if m not in s.files]
        raise DatasetError(f"{s.folder or ds.root}: synthetic subject {missing[0]!r} has no {', '.join(map(repr, lacks))} "
                           f"image (has: {', '.join(sorted(s.files))}); {len(missing)} subject(s) of {ds.root} are "
                           f"incomplete — regenerate them with medsyn generate")
    parts, n = [], 0
    for sid in ds.ids():
        if limit is not None and n >= limit:
            break
        part = Pool.of(load_slices(ds, [sid], p.modalities, **kw), prefix="synthetic:")
        parts.append(part)
        n += len(part)
    pool = Pool.concat(parts)
    return pool if limit is None else pool.take(slice(0, limit))


class _Augmented:
    """Sec. 3.4's traditionally augmented slices, computed when read: slice ``j`` is real slice
    ``src[j]`` under the transform ``transforms[j]``, drawn up front (so the set is fixed by its
    seed and only ``n`` small matrices are held). ``images`` / ``labels`` are :class:`Rows` over
    the two fields; the last slice computed is kept, so reading a slice's image then its label
    warps once."""

    def __init__(self, real: Pool, src: list[int], transforms: list[tuple[np.ndarray, np.ndarray]]):
        self.real, self.src, self.transforms = real, src, transforms
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        m, h, w = real.images.shape[1:]
        self.images = _Field(self, 0, (len(src), m, h, w), real.images.dtype)
        self.labels = _Field(self, 1, (len(src), h, w), real.labels.dtype)

    def get(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        if self._last is None or self._last[0] != j:
            i = self.src[j]
            image = np.asarray(self.real.images[i], dtype=np.float32)
            im, lab, _ = warp_slice(image, np.asarray(self.real.labels[i]), image.max(axis=0) > 0, *self.transforms[j])
            self._last = (j, (im.astype(self.images.dtype), lab))
        return self._last[1]


class _Field:
    def __init__(self, owner: _Augmented, k: int, shape: tuple[int, ...], dtype: Any):
        self.owner, self.k, self.shape, self.dtype = owner, k, shape, np.dtype(dtype)

    def __getitem__(self, j: int) -> np.ndarray:
        return self.owner.get(int(j))[self.k]


def augmented_data(real: Pool, n: int, rng: np.random.Generator, config: LabelAugmentConfig) -> Pool:
    """``n`` traditionally augmented slices (Sec. 3.4), each from a random real training slice,
    computed when read (:class:`_Augmented`; memory does not grow with ``n``)."""
    if n <= 0:
        return real.take(slice(0, 0))
    src, transforms = [], []
    shape = real.labels.shape[1:]
    for _ in range(n):
        src.append(int(rng.integers(len(real))))
        transforms.append(random_label_affine(rng, shape, config))  # the draws augment_slice makes
    aug = _Augmented(real, src, transforms)
    rows = np.arange(n)
    return Pool(Rows([(aug.images, rows)]), Rows([(aug.labels, rows)]), [real.origin[i] for i in src])


# --------------------------------------------------------------------------- train / evaluate


def phase_steps(sizes: Sequence[int], epochs: int | None, steps: int | None) -> list[int]:
    """Updates per phase: ``epochs`` × phase size (batch 1), or ``steps`` split in proportion."""
    if steps is not None:
        total = sum(sizes)
        return [max(1, int(round(steps * n / total))) for n in sizes]
    return [int(epochs) * n for n in sizes]


def train_segmenter(phases: Sequence[Pool], n_steps: Sequence[int], p: QuConfig, seed: int,
                    device: torch.device) -> torch.nn.Module:
    """Train a fresh segmenter on each phase in turn (shuffled epochs, batch 1, Sec. 3.1)."""
    torch.manual_seed(seed)
    model = build_segmenter(p).to(device)
    opt = adam(model.parameters(), p)
    rng = np.random.default_rng(seed)
    model.train()
    for pool, n in zip(phases, n_steps):
        order: list[int] = []
        for _ in range(n):
            if not order:
                order = list(rng.permutation(len(pool)))
            j = order.pop()
            image = torch.from_numpy(pool.images[j][None].astype(np.float32)).to(device)
            label = torch.from_numpy(pool.labels[j][None, None].astype(np.int64)).to(device)
            segmenter_step(model, opt, image, label, p)
    model.eval()
    return model


@torch.no_grad()
def evaluate(model: torch.nn.Module, test: Pool, n_classes: int, device: torch.device,
             view_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Dice and MSE of a segmenter on ``test`` (module docstring), as means over 2D slices.

    A per-modality segmenter (Sec. 2.9) is scored on each modality's view and the views are
    averaged (``*_per_view`` keeps each). ``dice``: every slice, an empty prediction on an empty
    label scoring 1; ``dice_lesion``: only the slices whose label has a lesion (``n_lesion``) —
    a test set with many lesion-free slices inflates ``dice``, a synthetic set (every slice has
    a lesion) does not, so compare sets on ``dice_lesion``.
    """
    model.eval()
    dices: list[list[float]] = []
    mses: list[list[float]] = []
    per_class: dict[int, list[float]] = {c: [] for c in range(1, n_classes)}
    has_lesion = []
    for j in range(len(test)):
        views = segment_views(model, torch.from_numpy(test.images[j][None].astype(np.float32)).to(device))[0]
        views = views.cpu().numpy()  # (V, C, H, W)
        label = test.labels[j].astype(np.int64)
        onehot = (label[None] == np.arange(n_classes)[:, None, None]).astype(np.float32)
        has_lesion.append(bool((label > 0).any()))
        dices.append([lesion_dice(v.argmax(0), label) for v in views])
        mses.append([float(np.mean((onehot - v) ** 2)) for v in views])
        for v in views:
            pred = v.argmax(0)
            for c in per_class:
                a, b = pred == c, label == c
                if a.any() or b.any():
                    per_class[c].append(2.0 * float((a & b).sum()) / float(a.sum() + b.sum()))
    d, m, lesion = np.asarray(dices), np.asarray(mses), np.asarray(has_lesion)
    names = list(view_names) if view_names is not None and len(view_names) == d.shape[1] else \
        [f"view{i}" for i in range(d.shape[1])]
    return {"dice": float(d.mean()), "mse": float(m.mean()), "n_test": len(test),
            "dice_lesion": float(d[lesion].mean()) if lesion.any() else None, "n_lesion": int(lesion.sum()),
            "dice_per_view": dict(zip(names, map(float, d.mean(axis=0)))) if d.shape[1] > 1 else None,
            "dice_per_class": {str(c): (float(np.mean(v)) if v else None) for c, v in per_class.items()}}


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over repeats of ``dice``, ``dice_lesion`` and ``mse``
    (std 0 for one repeat)."""
    out: dict[str, Any] = {"n_repeats": len(results)}
    for k in ("dice", "dice_lesion", "mse"):
        v = [r[k] for r in results if r.get(k) is not None]
        out[k] = {"mean": float(np.mean(v)) if v else None,
                  "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None}
    return out


def example_slices(pool: Pool, k: int) -> list[int]:
    """Indices of the ``k`` slices of ``pool`` with the largest lesion area (ties: pool order),
    in pool order — the slices the figures show."""
    area = [int((np.asarray(pool.labels[j]) > 0).sum()) for j in range(len(pool))]
    return sorted(sorted(range(len(pool)), key=lambda j: (-area[j], j))[:max(k, 0)])


@torch.no_grad()
def predict_labels(model: torch.nn.Module, pool: Pool, idx: Sequence[int], device: torch.device) -> np.ndarray:
    """Argmax label maps ``(K, V, H, W)`` uint8 of each segmenter view on the slices ``idx``."""
    model.eval()
    maps = [segment_views(model, torch.from_numpy(np.asarray(pool.images[j])[None].astype(np.float32)).to(device))[0]
            .argmax(1).cpu().numpy().astype(np.uint8) for j in idx]
    return np.stack(maps) if maps else np.zeros((0, 1, 1, 1), np.uint8)


def example_arrays(pool: Pool, idx: Sequence[int], prefix: str = "") -> dict[str, np.ndarray]:
    """The example slices' images ``(K, M, H, W)`` (float16, standardised), labels ``(K, H, W)``
    and origins, under ``prefix``."""
    shape = pool.images.shape[1:] if len(pool) else (0, 0, 0)
    return {f"{prefix}images": np.stack([np.asarray(pool.images[j]) for j in idx]).astype(np.float16) if idx
            else np.zeros((0, *shape), np.float16),
            f"{prefix}labels": np.stack([np.asarray(pool.labels[j]) for j in idx]).astype(np.uint8) if idx
            else np.zeros((0, *shape[1:]), np.uint8),
            f"{prefix}origin": np.asarray([pool.origin[j] for j in idx], dtype=str)}


def write_examples(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez_compressed`` written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _pm(stat: dict[str, Any] | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _f(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _check_out(out: Path, names: Sequence[str]) -> None:
    for n in names:
        if (out / n).exists():
            raise OutputError(f"{out / n}: exists; choose a new --out (results are never overwritten)")


def _write(out: Path, name: str, record: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{name}.json", json.dumps(record, indent=1, default=float).encode())
    atomic_write_bytes(out / f"{name}.md", markdown.encode())
    return out / f"{name}.md", out / f"{name}.json"


def _amount(frac: float, n: int, unit: str = "R") -> str:
    if frac == 0:
        return "0"
    return f"{unit}×{frac:g} ({n})" if frac != 1 else f"{unit} ({n})"


def run_table2(run: str | Path, synthetic: str | Path, out: str | Path, *, experiments: str | Sequence[int] | None = None,
               epochs: int | None = None, steps: int | None = None, repeats: int = 1, seed: int = 0,
               device: str = "cpu", log: Callable[[str], None] | None = None,
               command: str | None = None, examples: int = EXAMPLES) -> dict[str, Any]:
    """Qu et al. Table 2 on the run's real data and the synthetic data set ``synthetic``.

    Writes ``out/table2.md`` and ``out/table2.json`` (never overwritten) and returns the record;
    with ``examples`` > 0 also ``out/table2_examples.npz``: the ``examples`` test slices with the
    largest lesions (``images``, ``labels``, ``origin``), the ``rows`` and each row's best repeat's
    predicted label maps ``predictions`` ``(rows, K, V, H, W)`` (V: ``views``).
    """
    from medsyn.training.engine import resolve_device

    out = Path(out)
    _check_out(out, ("table2.md", "table2.json", "table2_examples.npz"))
    ids = parse_experiments(experiments)
    if repeats < 1 or (steps is not None and steps < 1) or (epochs is not None and epochs < 1):
        raise ConfigError("--repeats, --steps and --epochs must be ≥ 1")
    if examples < 0:
        raise ConfigError(f"--examples: got {examples}; expected ≥ 0 (0: no example predictions)")
    cfg, p, state = read_pipeline(run)
    epochs = p.segmenter_epochs if epochs is None and steps is None else epochs
    dev = resolve_device(device)
    real_train, test, split = real_data(run)
    holdout = read_holdout(run)
    ex_idx = example_slices(test, examples)
    ex_preds = []
    R = len(real_train)
    exps = [TABLE2[i] for i in ids]
    need = max((int(round(e.synthetic * R)) for e in exps), default=0)
    provenance = check_synthetic_labels(synthetic, holdout) if need else None
    syn = synthetic_data(synthetic, p, list(state["slice_size"]), limit=need) if need else None
    if syn is not None and len(syn) < need:
        raise DatasetError(f"{synthetic}: {len(syn)} synthetic slices, but experiment(s) "
                           f"{[e.id for e in exps if round(e.synthetic * R) > len(syn)]} need up to {need} "
                           f"(R = {R} real training slices); generate more with `medsyn generate {run} --n {need} ...`")
    aug_cfg = LabelAugmentConfig(tuple(p.label_scale), tuple(p.label_rotation_deg), p.label_translation, p.label_flip_prob)
    rows = []
    for e in exps:
        rng = np.random.default_rng([seed, e.id])
        n_real, n_syn, n_aug = (int(round(f * R)) for f in (e.real, e.synthetic, e.augmented))
        sel = rng.permutation(R)[:n_real]  # the real subset "R × 0.5" …, seeded per experiment
        real = real_train.take(sel)
        synth = syn.take(slice(0, n_syn)) if n_syn else real_train.take(slice(0, 0))
        aug = augmented_data(real_train, n_aug, np.random.default_rng([seed, e.id, 2]), aug_cfg)
        if e.mixing == "syn-then-real":
            phases = [synth, real]
        elif e.mixing == "real-then-syn":
            phases = [real, synth]
        else:
            phases = [Pool.concat([real, synth, aug])]
        phases = [ph for ph in phases if len(ph)]
        for ph in phases:
            check_no_leak(ph, holdout, f"Table 2 experiment {e.id}")
        n_steps = phase_steps([len(ph) for ph in phases], epochs, steps)
        results, preds = [], []
        for r in range(repeats):
            model = train_segmenter(phases, n_steps, p, seed + r, dev)
            results.append(evaluate(model, test, p.n_classes, dev, p.modalities))
            preds.append(predict_labels(model, test, ex_idx, dev) if ex_idx else None)
        b = max(range(repeats), key=lambda r: results[r]["dice"])  # Sec. 3.1: "trained four times, the best kept"
        best = results[b]
        ex_preds.append(preds[b])
        row = {"id": e.id, "real": e.real, "synthetic": e.synthetic, "augmented": e.augmented, "mixing": e.mixing,
               "n_real": n_real, "n_synthetic": n_syn, "n_augmented": n_aug, "steps": n_steps, **best,
               "repeats": results, "summary": summarize(results),
               "paper": dict(zip(("mse", "dice"), PAPER_TABLE2[e.id]))}
        rows.append(row)
        if log is not None:
            log(f"experiment {e.id:>2}: real {n_real}, synthetic {n_syn}, augmented {n_aug}, {MIXING_NAMES[e.mixing]}, "
                f"steps {n_steps} → MSE {best['mse']:.4f}, Dice {best['dice']:.4f}")
    record = {"medsyn_version": __version__, "table": "Qu et al. Table 2", "run_dir": str(Path(run).resolve()),
              "synthetic": str(Path(synthetic).resolve()) if syn is not None else None, "R": R, "n_test": len(test),
              "n_test_lesion": int(sum(bool((lab > 0).any()) for lab in test.labels)),
              "segmenter_input": p.segmenter_input,
              "split": split, "synthetic_label_sources": provenance,
              "budget": {"epochs": epochs, "steps": steps, "repeats": repeats}, "seed": seed,
              "device": str(dev), "command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    if ex_idx:
        out.mkdir(parents=True, exist_ok=True)
        write_examples(out / "table2_examples.npz", {
            **example_arrays(test, ex_idx), "rows": np.asarray([e.id for e in exps]),
            "predictions": np.stack(ex_preds), "views": np.asarray(_view_names(p, ex_preds[0].shape[1]), dtype=str)})
        record["examples"] = {"file": "table2_examples.npz", "slices": [test.origin[j] for j in ex_idx],
                              "repeat": "the best of each row"}
    md = table2_markdown(record)
    _write(out, "table2", record, md)
    return record


def _view_names(p: QuConfig, n_views: int) -> list[str]:
    return list(p.modalities) if n_views == len(p.modalities) and n_views > 1 else ["+".join(p.modalities)]


def table2_markdown(record: dict[str, Any]) -> str:
    b = record["budget"]
    budget = f"{b['steps']} steps per experiment" if b["steps"] is not None else f"{b['epochs']} epochs per phase"
    lines = ["# Qu et al. Table 2 — does synthetic data help lesion segmentation?", "",
             f"R = {record['R']} real training slices; {record['n_test']} real test slices "
             f"(split by {record['split']['split']}, {record.get('n_test_lesion', '?')} with a lesion); {budget}, batch 1, "
             f"best of {b['repeats']} (Sec. 3.1) and mean ± std over the {b['repeats']}; seed {record['seed']}; "
             f"segmenter: {record.get('segmenter_input', 'multichannel')}.",
             "Dice: whole lesion, mean over 2D slices (an empty prediction on an empty slice scores 1); Dice (lesion): "
             "over the slices with a lesion only; MSE: one-hot label vs softmax. Paper: BRATS2015, R = 15070.", ""]
    if record["split"].get("warning"):
        lines += [f"> **Note:** {record['split']['warning']}.", ""]
    if record.get("command"):
        lines += [f"Command: `{record['command']}`", ""]
    lines += ["| # | real | synthetic | augmented | mixing | MSE | Dice | Dice (lesion) | Dice mean ± std | "
              "Dice (lesion) mean ± std | paper MSE | paper Dice |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        sm = r["summary"]
        lines.append(f"| {r['id']} | {_amount(r['real'], r['n_real'])} | {_amount(r['synthetic'], r['n_synthetic'])} | "
                     f"{_amount(r['augmented'], r['n_augmented'])} | {MIXING_NAMES[r['mixing']]} | {r['mse']:.4f} | "
                     f"{r['dice']:.4f} | {_f(r['dice_lesion'])} | {_pm(sm['dice'])} | {_pm(sm['dice_lesion'])} | "
                     f"{r['paper']['mse']:.3f} | {r['paper']['dice']:.3f} |")
    return "\n".join(lines) + "\n"


def run_table1(run: str | Path, synthetic: dict[str, str | Path], out: str | Path, *, epochs: int | None = None,
               steps: int | None = None, repeats: int = 1, seed: int = 0, device: str = "cpu",
               use_run_segmenter: bool = False, log: Callable[[str], None] | None = None,
               command: str | None = None, examples: int = EXAMPLES) -> dict[str, Any]:
    """Qu et al. Table 1: a real-trained segmenter on real test slices and on each synthetic set.

    ``synthetic`` maps a row name (the lesion-supervision variant: 1SEG, 1ECL+4DCL, 4SEG) to a
    synthetic data set generated *without* the segmenter filter (``--min-dice 0``). Each is
    tested on its first slices, as many as the real test set has (all if fewer). ``repeats``
    segmenters (seeds ``seed … seed + repeats − 1``) are trained on the real training slices and
    every row gives the mean ± std over them; ``use_run_segmenter`` tests the run's
    ``segmenter`` stage instead (one model, no repeats). With ``examples`` > 0,
    ``out/table1_examples.npz`` keeps, per test set (``sets``: ``real`` and the variants), its
    ``examples`` slices with the largest lesions (``<set>/images``, ``<set>/labels``,
    ``<set>/origin``) and the first segmenter's label maps ``<set>/predictions`` ``(K, V, H, W)``.
    """
    from medsyn.training.engine import resolve_device

    out = Path(out)
    _check_out(out, ("table1.md", "table1.json", "table1_examples.npz"))
    if not synthetic:
        raise ConfigError("--synthetic: give at least one VARIANT=DIR synthetic data set for Table 1")
    if repeats < 1 or (steps is not None and steps < 1) or (epochs is not None and epochs < 1):
        raise ConfigError("--repeats, --steps and --epochs must be ≥ 1")
    if use_run_segmenter and repeats > 1:
        raise ConfigError("--repeats: the run's segmenter stage is one model; drop --run-segmenter to train repeats")
    if examples < 0:
        raise ConfigError(f"--examples: got {examples}; expected ≥ 0 (0: no example predictions)")
    cfg, p, state = read_pipeline(run)
    epochs = p.segmenter_epochs if epochs is None and steps is None else epochs
    dev = resolve_device(device)
    real_train, test, split = real_data(run)
    test_sets = [("-", "real", None, test)]
    for name, root in synthetic.items():
        test_sets.append((name, "synthetic", str(Path(root).resolve()),
                          synthetic_data(root, p, list(state["slice_size"]), limit=len(test))))  # first len(test)
    if use_run_segmenter:
        models = [load_stage(run, "segmenter", dev).networks["S"]]
        trained = "the run's segmenter stage"
    else:
        n_steps = phase_steps([len(real_train)], epochs, steps)
        check_no_leak(real_train, read_holdout(run), "Table 1 segmenter")
        models = (train_segmenter([real_train], n_steps, p, seed + r, dev) for r in range(repeats))
        trained = f"{len(real_train)} real training slices, {n_steps[0]} steps, {repeats} repeat(s)"
    results: list[list[dict[str, Any]]] = [[] for _ in test_sets]
    keys = ["real" if kind == "real" else name for name, kind, _, _ in test_sets]  # the figures' set names
    ex_idx = [example_slices(pool, examples) for _, _, _, pool in test_sets]
    ex: dict[str, np.ndarray] = {}
    for r, model in enumerate(models):
        for i, (_, _, _, pool) in enumerate(test_sets):
            results[i].append(evaluate(model, pool, p.n_classes, dev, p.modalities))
            if r == 0 and ex_idx[i]:
                ex.update(example_arrays(pool, ex_idx[i], f"{keys[i]}/"))
                ex[f"{keys[i]}/predictions"] = predict_labels(model, pool, ex_idx[i], dev)
    rows = []
    for (name, kind, root, pool), res in zip(test_sets, results):
        row = {"method": name, "test": kind, **({"synthetic": root} if root else {}), **res[0],
               "n_lesion": res[0]["n_lesion"], "repeats": res, "summary": summarize(res)}
        paper_key = "real" if kind == "real" else name
        if paper_key in PAPER_TABLE1:
            row["paper"] = dict(zip(("mse", "dice"), PAPER_TABLE1[paper_key]))
        rows.append(row)
        if log is not None:
            sm = row["summary"]
            log(f"{name:>10} on {kind:<9} ({row['n_test']} slices, {row['n_lesion']} with a lesion): MSE "
                f"{_pm(sm['mse'])}, Dice {_pm(sm['dice'])}, Dice (lesion) {_pm(sm['dice_lesion'])}")
    record = {"medsyn_version": __version__, "table": "Qu et al. Table 1", "run_dir": str(Path(run).resolve()),
              "segmenter": trained, "segmenter_input": p.segmenter_input, "split": split,
              "budget": {"epochs": epochs, "steps": steps, "repeats": 1 if use_run_segmenter else repeats},
              "seed": seed, "device": str(dev), "command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "rows": rows}
    if ex:
        sets = [k for k in keys if f"{k}/predictions" in ex]
        n_views = ex[f"{sets[0]}/predictions"].shape[1]
        out.mkdir(parents=True, exist_ok=True)
        write_examples(out / "table1_examples.npz", {**ex, "sets": np.asarray(sets, dtype=str),
                                                     "views": np.asarray(_view_names(p, n_views), dtype=str)})
        record["examples"] = {"file": "table1_examples.npz", "sets": sets, "repeat": "the first segmenter"}
    lines = ["# Qu et al. Table 1 — lesion detection on real and synthetic test data", "",
             f"Segmenter ({p.segmenter_input}): {trained}. Synthetic sets generated without the segmenter filter "
             f"(Sec. 3.5); each tested on as many slices as the real test set ({len(test)}).",
             "Mean ± std over the repeats. Dice: whole lesion, mean over 2D slices (an empty prediction on an empty "
             "slice scores 1); Dice (lesion): over the slices with a lesion only — the fair comparison between real "
             "test slices (some lesion-free) and synthetic ones (all with a lesion); MSE: one-hot label vs softmax.", ""]
    if split.get("warning"):
        lines += [f"> **Note:** {split['warning']}.", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["| synthetic method | test data type | slices (with lesion) | MSE | Dice | Dice (lesion) | paper MSE | "
              "paper Dice |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pm, sm = r.get("paper", {}), r["summary"]
        lines.append(f"| {r['method']} | {r['test']} | {r['n_test']} ({r['n_lesion']}) | {_pm(sm['mse'])} | "
                     f"{_pm(sm['dice'])} | {_pm(sm['dice_lesion'])} | {pm.get('mse', float('nan')):.3f} | "
                     f"{pm.get('dice', float('nan')):.3f} |")
    _write(out, "table1", record, "\n".join(lines) + "\n")
    return record
