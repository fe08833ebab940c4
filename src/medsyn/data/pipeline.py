"""From a DataConfig to normalised cases: discover → split → load → fit normalisation → normalise.

Training goes through the preprocessed cache (:mod:`medsyn.data.cache`): each subject is read,
normalised and cropped once, the target normaliser is fitted by merging per-case histograms
(:func:`fit_normalization_streaming`), and the samplers read the entries memory-mapped — memory
does not grow with the number of subjects. Prediction normalises a new input in memory with the
run's saved state (:func:`normalize_case`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from medsyn.config import DataConfig, NormConfig
from medsyn.data.cache import CachedCase, MergedHistogram, PreprocessedCache, prepare_cache
from medsyn.data.cases import Case, load_case
from medsyn.data.dataset import Dataset, discover, split_subjects
from medsyn.data.normalization import NormalizationState, Normalizer, make_normalizer
from medsyn.data.sampling import NormalizedCase
from medsyn.errors import DatasetError

#: modalities with absolute units get a fixed window by default
DEFAULT_NORMS = {"ct": NormConfig(kind="window", low=-1024.0, high=3000.0)}


def norm_config(data: DataConfig, modality: str) -> NormConfig:
    if modality in data.normalization:
        return data.normalization[modality]
    return DEFAULT_NORMS.get(modality.lower(), NormConfig(kind="percentile"))


def open_dataset(data: DataConfig) -> Dataset:
    return discover(data.root, data.manifest)


def make_splits(ds: Dataset, data: DataConfig) -> dict[str, list[str]]:
    return split_subjects(ds, train=data.train, val=data.val, test=data.test, seed=data.split_seed,
                          val_fraction=data.val_fraction, test_fraction=data.test_fraction)


def load_cases(ds: Dataset, ids: list[str], data: DataConfig, require_target: bool = True) -> list[Case]:
    return [load_case(ds.subjects[i], list(data.source), data.target, mask=data.mask, label=data.label,
                      resample=data.resample, require_target=require_target) for i in ids]


def source_recipes(data: DataConfig) -> dict[str, dict]:
    """Per-image normalisation recipe of each source (fitted on each image when it is used)."""
    return {m: make_normalizer(norm_config(data, m), per_image=True).to_dict() for m in data.source}


def fit_normalization(data: DataConfig, train_cases: list[Case]) -> NormalizationState:
    """Source recipes and the target normaliser fitted on the training targets, from cases held
    in memory (the exact reference of :func:`fit_normalization_streaming`)."""
    if not train_cases:
        raise DatasetError("no training subjects: the split left data.train empty")
    sources = source_recipes(data)
    tn = make_normalizer(norm_config(data, data.target), per_image=False)
    tn.fit([c.target.array for c in train_cases], [c.mask for c in train_cases])
    outside = np.concatenate([c.target.array[~c.mask].ravel() for c in train_cases])
    background = float(np.median(outside)) if outside.size else float(min(c.target.array.min() for c in train_cases))
    stats = {}
    for m in data.source:
        meds = [float(np.median(c.sources[m].array[c.mask])) for c in train_cases]
        stats[m] = {"spacing": [float(x) for x in np.mean([c.sources[m].spacing for c in train_cases], axis=0)],
                    "median_range": [min(meds), max(meds)]}
    dtype = np.result_type(*[c.target.original_dtype for c in train_cases])
    return NormalizationState(sources, tn.to_dict(), data.target, str(dtype), background, stats)


def normalize_case(case: Case, state: NormalizationState, sources: list[str]) -> NormalizedCase:
    src = np.stack([state.source_normalizer(m, case.sources[m].array, case.mask).forward(case.sources[m].array)
                    for m in sources])
    tgt = state.target_normalizer().forward(case.target.array) if case.target is not None else None
    return NormalizedCase(case.id, src.astype(np.float32), tgt, case.mask, case.label)


def target_normalizer(state: NormalizationState) -> Normalizer:
    return state.target_normalizer()


def fit_normalization_streaming(data: DataConfig, cases: list[CachedCase]) -> NormalizationState:
    """:func:`fit_normalization` from cache entries: the target normaliser and the background
    median from per-case histograms merged one case at a time (:class:`MergedHistogram`), the
    training statistics from each entry's ``meta.json``. Memory: two histograms."""
    if not cases:
        raise DatasetError("no training subjects: the split left data.train empty")
    merged = {}
    for part in ("inside", "outside"):
        hs = [c.meta["target_hist"][part] for c in cases if c.meta["target_hist"][part]["n"]]
        merged[part] = MergedHistogram(min(h["lo"] for h in hs), max(h["hi"] for h in hs)) if hs else None
    for c in cases:
        arrays = c.histograms()
        for part, h in merged.items():
            info = c.meta["target_hist"][part]
            if h is not None and info["n"]:
                h.add(arrays[f"{part}_counts"], arrays[f"{part}_sums"], info["n"], info["sum"], info["sumsq"])
    tn = make_normalizer(norm_config(data, data.target), per_image=False)
    tn.fit_distribution(merged["inside"])
    background = (merged["outside"].percentile(50) if merged["outside"] is not None
                  else min(c.meta["target_min"] for c in cases))
    stats = {}
    for m in data.source:
        meds = [c.meta["source_median_in_mask"][m] for c in cases]
        stats[m] = {"spacing": [float(x) for x in np.mean([c.meta["source_spacing"][m] for c in cases], axis=0)],
                    "median_range": [min(meds), max(meds)]}
    dtype = np.result_type(*[np.dtype(c.meta["target_dtype"]) for c in cases])
    return NormalizationState(source_recipes(data), tn.to_dict(), data.target, str(dtype), float(background), stats)


@dataclass
class PreparedData:
    """The engine's data: train/val subjects as memory-mapped cache entries whose
    ``target_normalizer`` is the run's (samplers normalise target patches with it)."""

    dataset: Dataset
    splits: dict[str, list[str]]
    norm: NormalizationState
    train: list[CachedCase]
    val: list[CachedCase]
    cache: PreprocessedCache


def prepare_training_data(data: DataConfig, norm: NormalizationState | None = None, *, dist: Any = None,
                          log: Callable[[str], None] = print) -> PreparedData:
    """Everything the engine needs; ``norm`` given (resume) is reused instead of re-fitted.

    Builds the missing cache entries first (under torchrun: local rank 0 of each node, the other
    ranks wait); each step raises a user error on every rank when it fails on one.
    """
    agree = dist.agree if dist is not None else (lambda fn: fn())

    def discover_and_split():
        ds = open_dataset(data)
        return ds, make_splits(ds, data)

    ds, splits = agree(discover_and_split)
    ids = [*splits["train"], *splits["val"]]
    if not splits["train"]:
        raise DatasetError("no training subjects: the split left data.train empty")
    cache, metas = prepare_cache(data, ds, ids, dist=dist, log=log)

    def open_and_fit():
        train, val = cache.open(splits["train"], metas), cache.open(splits["val"], metas)
        state = norm if norm is not None else fit_normalization_streaming(data, train)
        tn = state.target_normalizer()
        for c in [*train, *val]:
            c.target_normalizer = tn
        return PreparedData(ds, splits, state, train, val, cache)

    return agree(open_and_fit)
