"""From a DataConfig to normalised cases: discover → split → load → fit normalisation → normalise.

Shared by training (train/val cases), prediction (normalise a new input with the run's saved
state) and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsyn.config import DataConfig, NormConfig
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


def fit_normalization(data: DataConfig, train_cases: list[Case]) -> NormalizationState:
    """Source recipes (fitted per image at use) and the target normaliser fitted on training targets."""
    if not train_cases:
        raise DatasetError("no training subjects: the split left data.train empty")
    sources = {}
    for m in data.source:
        n = make_normalizer(norm_config(data, m), per_image=True)
        sources[m] = n.to_dict()
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


@dataclass
class PreparedData:
    dataset: Dataset
    splits: dict[str, list[str]]
    norm: NormalizationState
    train: list[NormalizedCase]
    val: list[NormalizedCase]
    val_raw: list[Case]


def prepare_training_data(data: DataConfig, norm: NormalizationState | None = None) -> PreparedData:
    """Everything the engine needs; ``norm`` given (resume) is reused instead of re-fitted."""
    ds = open_dataset(data)
    splits = make_splits(ds, data)
    train_raw = load_cases(ds, splits["train"], data)
    val_raw = load_cases(ds, splits["val"], data)
    if norm is None:
        norm = fit_normalization(data, train_raw)
    train = [normalize_case(c, norm, data.source) for c in train_raw]
    val = [normalize_case(c, norm, data.source) for c in val_raw]
    return PreparedData(ds, splits, norm, train, val, val_raw)
