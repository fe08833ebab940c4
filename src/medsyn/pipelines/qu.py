"""Qu et al.'s pipeline runner: every stage into one run folder, in order, resumable.

::

    RUN/
      config.yaml        the pipeline config (method: qu-pipeline), every default written out
      pipeline.json      grid (slice size, spacing), split, and each stage's status and step
      stages/structure/  a normal medsyn run folder per stage (config, checkpoints, metrics, samples)
      stages/assist/
      stages/generation/ starts from the assist stage's EC, DC, D and SEG
      stages/segmenter/

Each stage is the registered method ``qu-<stage>`` run by the shared :class:`~medsyn.training.
engine.Trainer` (checkpoints, exact resume, ``train.max_steps``, NaN stop, samples). A stage
whose run ended (``done`` or ``max_steps``) is skipped on a re-run; the first unfinished one is
resumed from its newest good checkpoint; a stage stopped by ``train.minutes`` or a signal stops
the pipeline. ``train.max_steps`` caps *each* stage. The generator stages train ``train.epochs``
(50, Sec. 3.1), the segmenter ``params.segmenter_epochs`` (100, Sec. 3.5); an epoch is every
in-range slice of every training subject once (batch 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medsyn.config import RunConfig, build_config, diff_configs, method_params, to_dict
from medsyn.data.dataset import Dataset
from medsyn.data.pipeline import make_splits, open_dataset
from medsyn.data.qu_slices import auto_slice_size, scan_geometry
from medsyn.errors import CheckpointError, ConfigError, DatasetError
from medsyn.methods import METHODS, Method
from medsyn.methods.qu2023 import STAGES, QuConfig
from medsyn.training import checkpoint as ckpt
from medsyn.training.engine import TrainResult, Trainer
from medsyn.training.run_dir import RunDir

PIPELINE_FILE = "pipeline.json"
#: keys that may change when a run is resumed (budgets)
BUDGET_KEYS = {"max_steps", "minutes", "epochs", "segmenter_epochs"}
#: networks a stage takes over from an earlier stage
INIT_FROM = {"generation": ("assist", ("EC", "DC", "D", "SEG"))}


class _StageTrainer(Trainer):
    """The engine's Trainer, plus initial weights from an earlier stage for a fresh stage."""

    def __init__(self, cfg: RunConfig, out: Path, *, init_weights: dict[str, dict[str, torch.Tensor]] | None = None,
                 **kw: Any):
        super().__init__(cfg, out, **kw)
        self._init_weights = init_weights or {}

    def setup(self) -> None:
        super().setup()
        if self.step == 0:  # fresh (or resumed before its first checkpoint): start from the earlier stage
            for name, state in self._init_weights.items():
                self.method.networks[name].load_state_dict(state)


def stage_dir(run: str | Path, stage: str) -> Path:
    return Path(run) / "stages" / stage


def _log(console: Any, msg: str) -> None:
    if console is not None:
        console.print(msg)


def _budget_free_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [d for d in diff_configs(old, new) if d.split(":")[0].split(".")[-1] not in BUDGET_KEYS]


def check_dataset(ds: Dataset, ids: list[str], p: QuConfig) -> None:
    """Every subject of ``ids`` has every modality (before anything is written)."""
    for sid in ids:
        s = ds.subjects[sid]
        missing = [m for m in p.modalities if m not in s.files]
        if missing:
            raise DatasetError(f"{s.folder or ds.root}: subject {sid!r} has no {', '.join(map(repr, missing))} image "
                               f"(has: {', '.join(sorted(s.files))}); every subject needs all of params.modalities = "
                               f"{p.modalities} (remove the subject or change params.modalities)")


@dataclass
class Holdout:
    """What a run never trained on: the real test data of the segmentation experiments.

    ``kind``: ``"subjects"`` — the split has labelled test subjects (Sec. 3.2's 9:1 split);
    ``"slices"`` — it has none, so the lowest ``params.slice_holdout`` of each labelled training
    subject's in-range slices is the test set and the next slice a gap, both left out of every
    stage and of the label pool; ``"none"`` — nothing real is unseen (``slice_holdout: 0``, or a
    run trained before medsyn held slices out). ``unseen_subjects``: the test and validation
    subjects (never trained on, never a label source). ``test_slices`` / ``excluded``:
    subject → canonical axial indices (test; test + gap).
    """

    kind: str
    test_subjects: list[str]
    unseen_subjects: list[str]
    test_slices: dict[str, list[int]] = field(default_factory=dict)
    excluded: dict[str, list[int]] = field(default_factory=dict)

    def never_trained(self, sid: str, k: int) -> bool:
        """True when slice ``k`` of subject ``sid`` must not reach any training set."""
        return sid in self.unseen_subjects or int(k) in self.excluded.get(sid, ())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "test_subjects": self.test_subjects, "unseen_subjects": self.unseen_subjects,
                "test_slices": self.test_slices, "excluded": self.excluded}


def make_holdout(ds: Dataset, splits: dict[str, list[str]], p: QuConfig, ranges: dict[str, list[int]]) -> Holdout:
    """The run's held-out real data (see :class:`Holdout`); ``ranges``: subject → ``[start, stop)``
    of its in-range axial slices (headers only)."""
    labelled = [sid for sid in splits["test"] if p.label in ds.subjects[sid].files]
    unseen = list(splits["test"]) + list(splits.get("val", []))
    if labelled:
        return Holdout("subjects", labelled, unseen)
    if p.slice_holdout <= 0:
        return Holdout("none", [], unseen)
    test, excluded = {}, {}
    for sid in splits["train"]:
        if p.label not in ds.subjects[sid].files:
            continue
        ks = list(range(*ranges[sid]))
        n_test = int(math.ceil(p.slice_holdout * len(ks)))
        if n_test == 0:
            continue
        test[sid] = ks[:n_test]
        excluded[sid] = ks[:n_test + 1]  # one slice between test and training
    return Holdout("slices", [], unseen, test, excluded)


def read_holdout(run: str | Path) -> Holdout:
    """The held-out data of a trained pipeline run (``pipeline.json``)."""
    _, _, state = read_pipeline(run)
    h = state.get("holdout")
    if h is None:  # a run from before the hold-out: its stages trained on every slice of the training subjects
        unseen = list(state["splits"].get("test", [])) + list(state["splits"].get("val", []))
        return Holdout("none", [], unseen)
    return Holdout(h["kind"], list(h["test_subjects"]), list(h["unseen_subjects"]),
                   {k: [int(i) for i in v] for k, v in h["test_slices"].items()},
                   {k: [int(i) for i in v] for k, v in h["excluded"].items()})


def plan(cfg: RunConfig) -> dict[str, Any]:
    """Split, grid, epoch size and held-out test data of a pipeline config, from the image headers only."""
    p: QuConfig = method_params(cfg)
    ds = open_dataset(cfg.data)
    splits = make_splits(ds, cfg.data)
    if not splits["train"]:
        raise DatasetError(f"{ds.root}: the split left no training subject (data.train / data.test_fraction)")
    check_dataset(ds, splits["train"], p)
    geo = scan_geometry(ds, splits["train"], p.modalities[0], p.slice_range)
    if sum(geo["counts"]) == 0:
        raise DatasetError(f"{ds.root}: no axial slice of the training subjects lies in params.slice_range "
                           f"{p.slice_range} mm (volumes of {[s[2] for s in geo['spacings']][:3]} mm slices); "
                           "lower params.slice_range")
    size = list(p.slice_size) if p.slice_size is not None else auto_slice_size(geo["sizes"], p.grid_multiple)
    holdout = make_holdout(ds, splits, p, dict(zip(splits["train"], geo["ranges"])))
    n_excluded = sum(len(v) for v in holdout.excluded.values())
    per_subject = max(1, round((sum(geo["counts"]) - n_excluded) / len(geo["counts"])))
    spacing = [round(v, 4) for v in geo["spacings"][0][:2]]
    return {"slice_size": size, "slices_per_subject": per_subject, "in_plane_spacing_mm": spacing,
            "splits": splits, "n_train": len(splits["train"]), "holdout": holdout.to_dict()}


def stage_config(cfg: RunConfig, stage: str, pl: dict[str, Any]) -> RunConfig:
    """The run config of one stage: method ``qu-<stage>`` and the pipeline's params with the
    grid and the training split resolved (``params.slice_size``, ``params.train_subjects``).

    The Qu sampler loads every training subject's in-range slices itself. The engine's own data
    loader would also hold every training volume in memory (float32, ≈ 80 GB for BraTS 2023's
    ~1100 training subjects), so the stage's ``data`` section points it at one image of one
    training subject (``data.train = [first]``), and ``data.patches_per_subject`` is the number
    of slices per epoch (every in-range slice of every training subject, batch 1).
    """
    p: QuConfig = method_params(cfg)
    d = to_dict(cfg)
    train = list(pl["splits"]["train"])
    d["method"] = f"qu-{stage}"
    d["params"]["slice_size"] = list(pl["slice_size"])
    d["params"]["train_subjects"] = train
    d["params"]["exclude_slices"] = dict(pl["holdout"]["excluded"]) or None
    d["data"].update(source=[p.modalities[0]], target=p.modalities[0], label=p.label, context_slices=1,
                     patches_per_subject=pl["slices_per_subject"] * len(train), augment=False,
                     train=train[:1], val=[], test=[], val_fraction=0.0, test_fraction=0.0)
    if stage == "segmenter":
        d["train"]["epochs"] = p.segmenter_epochs
    return build_config(d)


def planned_steps(stage_cfg: RunConfig) -> int:
    """The engine's budget for a stage: ``train.max_steps`` or epochs × steps per epoch."""
    t, d = stage_cfg.train, stage_cfg.data
    if t.max_steps is not None:
        return t.max_steps
    return t.epochs * max(1, math.ceil(d.patches_per_subject * len(d.train or []) / t.batch_size))


def run_pipeline(cfg: RunConfig, out: str | Path, *, resume: bool = False, allow_config_change: bool = False,
                 console: Any = None, progress: bool = True) -> TrainResult:
    """Train every stage of ``params.stages`` into ``out`` (see the module docstring)."""
    if cfg.method != "qu-pipeline":
        raise ConfigError(f"config key 'method': run_pipeline trains 'qu-pipeline', got {cfg.method!r}")
    run = RunDir(out)
    p: QuConfig = method_params(cfg)
    if resume:
        if not run.exists():
            raise CheckpointError(f"{run.path}: nothing to resume (no config.yaml); start a run with --out")
        diffs = _budget_free_diffs(to_dict(run.read_config()), to_dict(cfg))
        if diffs and not allow_config_change:
            raise ConfigError(f"{run.config_path}: the config differs from the run's ({'; '.join(diffs[:8])}); "
                              "pass --allow-config-change to resume anyway")
    elif run.has_content():
        raise ConfigError(f"{run.path}: folder exists and is not empty; choose a new --out, or resume it with "
                          f"--resume {run.path}")
    pl = plan(cfg)  # reads headers: a bad dataset fails here, before anything is written
    state = run.read_json(PIPELINE_FILE) if resume and (run.path / PIPELINE_FILE).is_file() else {"stages": {}}
    if state.get("slice_size") not in (None, pl["slice_size"]):
        raise ConfigError(f"{run.path / PIPELINE_FILE}: the run was trained on a {state['slice_size']} grid, the config "
                          f"now gives {pl['slice_size']}; set params.slice_size to {state['slice_size']}")
    old_excluded = (state.get("holdout") or {}).get("excluded", {})
    if resume and state.get("stages") and old_excluded != pl["holdout"]["excluded"]:
        raise ConfigError(f"{run.path / PIPELINE_FILE}: the run's stages trained without the held-out slices "
                          f"{pl['holdout']['excluded']} that the config now gives (before: {old_excluded}); resuming "
                          "would mix test slices into training — start a new run")
    state.update({k: pl[k] for k in ("slice_size", "slices_per_subject", "in_plane_spacing_mm", "splits", "holdout")})
    run.path.mkdir(parents=True, exist_ok=True)
    if not resume:
        run.write_config(cfg)
    run.write_json(PIPELINE_FILE, state)

    total, last = 0, "done"
    for k, stage in enumerate(p.stages, start=1):
        scfg = stage_config(cfg, stage, pl)
        sdir = stage_dir(run.path, stage)
        planned = planned_steps(scfg)
        st = state["stages"].get(stage, {})
        if st.get("status") == "done" and st.get("step", -1) >= planned:
            _log(console, f"stage {k}/{len(p.stages)} [bold]{stage}[/]: done at step {st['step']}, skipped")
            total += st["step"]
            continue
        resume_stage = RunDir(sdir).exists()
        if resume_stage:
            diffs = _budget_free_diffs(to_dict(RunDir(sdir).read_config()), to_dict(scfg))
            if diffs and not allow_config_change:
                raise ConfigError(f"{sdir / 'config.yaml'}: the stage's config differs ({'; '.join(diffs[:8])}); "
                                  "pass --allow-config-change to resume anyway")
        init = None
        if stage in INIT_FROM and not resume_stage:
            src, names = INIT_FROM[stage]
            weights = stage_weights(run.path, src)
            init = {n: weights[n] for n in names}
        _log(console, f"stage {k}/{len(p.stages)} [bold]{stage}[/] (qu-{stage}, {planned} steps) → {sdir}")
        trainer = _StageTrainer(scfg, sdir, init_weights=init, resume=resume_stage, allow_config_change=True,
                                console=console, progress=progress)
        res = trainer.fit()
        finished = res.stopped in ("done", "max_steps")
        state["stages"][stage] = {"status": "done" if finished else "stopped", "step": res.step, "stopped": res.stopped,
                                  "planned_steps": planned}
        run.write_json(PIPELINE_FILE, state)
        total += res.step
        last = res.stopped
        if not finished:
            _log(console, f"[yellow]stage {stage} stopped ({res.stopped}) at step {res.step}[/]; continue with "
                          f"`medsyn train --resume {run.path}`")
            return TrainResult(run.path, total, res.stopped, None)
    return TrainResult(run.path, total, last, None)


# --------------------------------------------------------------------------- reading a trained run


def read_pipeline(run: str | Path) -> tuple[RunConfig, QuConfig, dict[str, Any]]:
    """``(pipeline config, its params, pipeline.json)`` of a pipeline run folder."""
    rd = RunDir(run)
    if not rd.exists():
        raise CheckpointError(f"{rd.path}: no config.yaml; not a medsyn run folder (train one with "
                              "`medsyn train configs/qu_brats.yaml`)")
    cfg = rd.read_config()
    if cfg.method != "qu-pipeline":
        raise CheckpointError(f"{rd.path}: a {cfg.method!r} run, not a Qu et al. pipeline run (method qu-pipeline)")
    return cfg, method_params(cfg), rd.read_json(PIPELINE_FILE)


def stage_checkpoint(run: str | Path, stage: str) -> Path:
    """The checkpoint to use of a trained stage: best.json's, else the newest that verifies."""
    sdir = stage_dir(run, stage)
    rd = RunDir(sdir)
    if not rd.exists():
        raise CheckpointError(f"{sdir}: stage {stage!r} was not trained in this run; train it with "
                              f"`medsyn train --resume {Path(run)}` (params.stages must list {stage!r})")
    if (sdir / "best.json").is_file():
        name = rd.read_json("best.json").get("checkpoint")
        if name and (rd.checkpoints / name).is_dir():
            return rd.checkpoints / name
    path, bad = ckpt.latest_good(rd.checkpoints)
    if path is None:
        raise CheckpointError(f"{rd.checkpoints}: no usable checkpoint{f' ({bad[0][1]})' if bad else ''}; resume "
                              f"training with `medsyn train --resume {Path(run)}`")
    return path


def stage_weights(run: str | Path, stage: str) -> dict[str, dict[str, torch.Tensor]]:
    weights, _ = ckpt.load_checkpoint(stage_checkpoint(run, stage))
    return weights


def load_stage(run: str | Path, stage: str, device: str | torch.device = "cpu") -> Method:
    """The trained networks of one stage, in eval mode on ``device``."""
    scfg = RunDir(stage_dir(run, stage)).read_config()
    spec = METHODS.get(scfg.method, key="method")
    method: Method = spec.build(method_params(scfg), in_channels=1, out_channels=1, patch_size=(0, 0))
    weights = stage_weights(run, stage)
    for name, net in method.networks.items():
        if name not in weights:
            raise CheckpointError(f"{stage_checkpoint(run, stage)}: no weights for network {name!r}")
        try:
            net.load_state_dict(weights[name])
        except RuntimeError as e:
            hint = (" (a segmenter trained before one-per-modality became the default: add "
                    "'segmenter_input: multichannel' under params in the stage's and the run's config.yaml)"
                    if stage == "segmenter" else "")
            raise CheckpointError(f"{stage_checkpoint(run, stage)}: the weights of {name!r} do not fit the network "
                                  f"its config builds ({str(e).splitlines()[0][:120]}){hint}") from None
    method.to(torch.device(device))
    method.eval()
    return method


__all__ = ["STAGES", "Holdout", "read_holdout", "run_pipeline", "read_pipeline", "load_stage", "stage_dir", "stage_checkpoint", "plan"]
