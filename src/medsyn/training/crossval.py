"""Cross-validation: one run per fold, every subject predicted by the run that never saw it.

Nie et al.'s MRI→CT study (Table 2) is a 16-subject leave-one-out experiment; any method here can
be evaluated the same way with ``medsyn crossval CONFIG --folds K|loo --out DIR``:

1. Folds: the dataset's subject ids (sorted) are shuffled with ``data.split_seed`` and dealt into
   K folds round-robin (``loo``: K = number of subjects). Explicit ``data.train/val/test`` lists are
   ignored — every subject is tested exactly once.
2. Fold k trains on every other fold (``data.train``), validates on none (``data.val: []``, as the
   paper's leave-one-out has no validation subject; the last checkpoint is used) and tests on
   fold k (``data.test``). Runs go to ``DIR/fold_<k>/``; a fold that finished is skipped and an
   interrupted one resumed (``medsyn train --resume``), so the command can be re-run after a stop.
3. Each fold's run predicts its test subjects into the shared ``DIR/predictions/``.
4. ``DIR/metrics.json`` (+ ``.csv``): ``medsyn evaluate``'s JSON over all subjects (per-subject
   rows, mean ± std), with ``settings.crossval`` naming the folds. ``medsyn report DIR`` reads it.

State: ``DIR/crossval.json`` (folds, seed, config hash, which folds are done), written atomically
after every fold.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any, Callable

from medsyn.config import RunConfig, config_hash, readable_dict
from medsyn.errors import CheckpointError, ConfigError
from medsyn.io.image import atomic_write_bytes

STATE = "crossval.json"
PRED = "predictions"
METRICS = "metrics.json"


def make_folds(ids: list[str], folds: int | str, seed: int) -> list[list[str]]:
    """Subject ids → K disjoint folds covering all of them (``"loo"``: one subject each).

    Deterministic: sorted ids shuffled by ``random.Random(seed)``, then dealt round-robin, so fold
    sizes differ by at most one.
    """
    ids = sorted(ids)
    n = len(ids)
    k = n if folds == "loo" else int(folds)
    if n < 2:
        raise ConfigError(f"cross-validation needs at least 2 subjects; the dataset has {n}")
    if not 2 <= k <= n:
        raise ConfigError(f"--folds: got {folds!r}; expected 'loo' or a number of folds from 2 to {n} (the subjects)")
    order = list(ids)
    random.Random(seed).shuffle(order)
    return [sorted(order[i::k]) for i in range(k)]


def parse_folds(value: str) -> int | str:
    if value == "loo":
        return "loo"
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--folds: got {value!r}; expected a number of folds (e.g. 5) or 'loo'") from None


def fold_config(cfg: RunConfig, train: list[str], test: list[str]) -> RunConfig:
    """The run config of one fold: the user's config with the fold's subject lists."""
    c = copy.deepcopy(cfg)
    c.data.train, c.data.val, c.data.test = list(train), [], list(test)
    return c


def _data_range(cfg: RunConfig) -> str | float:
    """A fixed-window target (CT HU) is scored with its window's range; MR per subject (``ref``)."""
    from medsyn.data.pipeline import norm_config

    n = norm_config(cfg.data, cfg.data.target)
    return float(n.high - n.low) if n.kind == "window" else "ref"


def run_crossval(cfg: RunConfig, out: str | Path, folds: int | str, *, device: str = "auto",
                 console: Any = None, train_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Train, predict and evaluate every fold into ``out``; returns the metrics dict (see module doc)."""
    from medsyn.data.pipeline import open_dataset
    from medsyn.inference.predict import load_run, predict_subjects
    from medsyn.methods import METHODS
    from medsyn.metrics.evaluate import evaluate_predictions, write_results
    from medsyn.training.distributed import launch_train
    from medsyn.training.run_dir import RunDir

    spec = METHODS.get(cfg.method, key="method")
    if not spec.predicts_volumes:
        raise ConfigError(f"method {cfg.method!r} does not translate source volumes into a target volume; "
                          "cross-validation scores predicted volumes")
    log = (lambda m: console.print(m, highlight=False)) if console is not None else (lambda m: None)
    train_fn = train_fn or launch_train
    out = Path(out)
    ds = open_dataset(cfg.data)
    ids = [s for s in ds.ids() if cfg.data.target in ds.subjects[s].files]
    if len(ids) < len(ds.ids()):
        log(f"{len(ds.ids()) - len(ids)} subject(s) without a {cfg.data.target} image are left out of the folds")
    fold_list = make_folds(ids, folds, cfg.data.split_seed)
    key = {"config_hash": config_hash(cfg), "folds": fold_list}
    state_path = out / STATE
    if state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{state_path}: unreadable cross-validation state ({e}); remove it to start over") from None
        if {k: state.get(k) for k in key} != key:
            raise ConfigError(f"{out}: holds a cross-validation with another config or other folds; "
                              "choose a new --out (or remove the folder to start over)")
    else:
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"{out}: folder exists and is not a cross-validation folder; choose a new --out")
        out.mkdir(parents=True, exist_ok=True)
        state = {**key, "method": cfg.method, "config": readable_dict(cfg), "done": []}

    def save_state() -> None:
        atomic_write_bytes(state_path, json.dumps(state, indent=1).encode())

    save_state()
    pred_dir = out / PRED
    for k, test in enumerate(fold_list):
        name = f"fold_{k:02d}"
        run_path = out / name
        if name in state["done"]:
            log(f"{name}: done earlier, skipped")
            continue
        train = [s for s in ids if s not in test]
        log(f"{name} ({k + 1}/{len(fold_list)}): train on {len(train)} subject(s), test on {', '.join(test)}")
        resume = RunDir(run_path).exists()
        result = train_fn(fold_config(cfg, train, test), run_path, resume=resume, console=console)
        if result is not None and getattr(result, "stopped", "done") == "interrupted":
            raise KeyboardInterrupt  # the fold's checkpoint is saved; re-running the command resumes it
        run = load_run(run_path, "best", device)
        predict_subjects(run, [ds.subjects[s] for s in test], pred_dir, force=True)
        state["done"].append(name)
        save_state()
    res = evaluate_predictions(pred_dir, ds.root, cfg.data.target, data_range=_data_range(cfg),
                               manifest=cfg.data.manifest, label="auto")
    fold_of = {s: f"fold_{k:02d}" for k, f in enumerate(fold_list) for s in f}
    res["settings"]["crossval"] = {"method": cfg.method, "folds": len(fold_list), "scheme": str(folds),
                                   "seed": cfg.data.split_seed, "fold_of_subject": fold_of,
                                   "runs": [f"fold_{k:02d}" for k in range(len(fold_list))]}
    write_results(res, out / METRICS)
    return res


def is_crossval_dir(path: str | Path) -> bool:
    return (Path(path) / STATE).is_file()


def first_fold_run(path: str | Path) -> Path:
    """The run folder of fold 0 (its config, curves and model card stand for the folds in a report)."""
    state = json.loads((Path(path) / STATE).read_text())
    return Path(path) / f"fold_{0:02d}" if state.get("folds") else Path(path)
