"""The training loop shared by every method.

One loop for any method: the method owns its networks, optimisers and step; the engine owns the
data sampler, device and precision, the epoch/learning-rate schedule calls, validation,
logging (metrics.jsonl, TensorBoard, PNG sample grids), checkpoints, resume, time budgets,
NaN detection and clean stops on Ctrl-C / SIGTERM.

An *epoch* is ``data.patches_per_subject × n_train_subjects / train.batch_size`` generator
updates (Nie et al. define epochs by sampled patches; every method here follows that).
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medsyn import __version__
from medsyn.config import RunConfig, diff_configs, method_params, to_dict
from medsyn.data.normalization import NormalizationState
from medsyn.data.pipeline import PreparedData, prepare_training_data
from medsyn.data.sampling import PatchSampler25D
from medsyn.errors import CheckpointError, ConfigError, MedsynError
from medsyn.methods import METHODS, Method, Runtime
from medsyn.training import checkpoint as ckpt
from medsyn.training.run_dir import RunDir, provenance


class TrainingDiverged(MedsynError):
    """A loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'train.device': {name!r} requested but no CUDA device is available; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'train.device': {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped: str  # "done" | "max_steps" | "minutes" | "interrupted"
    best: dict[str, Any] | None


class Trainer:
    """Builds data, method and run folder from a resolved :class:`RunConfig`, then trains."""

    def __init__(self, cfg: RunConfig, out: str | Path, *, resume: bool = False, allow_config_change: bool = False,
                 console: Any = None, progress: bool = True):
        self.cfg, self.run = cfg, RunDir(out)
        self.resume, self.allow_config_change = resume, allow_config_change
        self.console, self.show_progress = console, progress
        self.spec = METHODS.get(cfg.method, key="method")
        self._stop_signal: str | None = None

    # ------------------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)

    def _check_run_folder(self) -> dict[str, Any] | None:
        """Fresh run: refuse a folder holding another run. Resume: compare configs; return None."""
        if self.resume:
            if not self.run.exists():
                raise CheckpointError(f"{self.run.path}: nothing to resume (no config.yaml); start a run with --out")
            old = to_dict(self.run.read_config())
            new = to_dict(self.cfg)
            # budget keys may change on resume (train longer, more minutes)
            budget = {"max_steps", "minutes", "epochs"}
            diffs = [d for d in diff_configs(old, new) if d.split(":")[0].split(".")[-1] not in budget]
            if diffs and not self.allow_config_change:
                raise ConfigError(
                    f"{self.run.config_path}: the config differs from the run's ({'; '.join(diffs[:8])}); "
                    "pass --allow-config-change to resume anyway"
                )
            if diffs:
                self._log("[yellow]resuming with a changed config:[/] " + "; ".join(diffs))
            return None
        if self.run.path.exists() and any(self.run.path.iterdir()):
            raise ConfigError(
                f"{self.run.path}: folder exists and is not empty; choose a new --out, or resume it with --resume {self.run.path}"
            )
        return None

    def setup(self) -> None:
        cfg = self.cfg
        self._check_run_folder()
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        norm = None
        if self.resume:
            norm = NormalizationState.from_dict(self.run.read_json("normalization.json"))
        self.data: PreparedData = prepare_training_data(cfg.data, norm)
        d = cfg.data
        n_src = len(d.source)
        k = d.context_slices if self.spec.sample_kind == "2.5d" else 1
        self.context = k
        if self.spec.make_sampler is not None:
            self.sampler = self.spec.make_sampler(cfg, self.data, cfg.train.seed)
            preview_sampler = self.spec.make_sampler(cfg, self.data, cfg.train.seed + 1)
        else:
            self.sampler = PatchSampler25D(self.data.train, slice_axis=d.slice_axis, context=k,
                                           patch_size=tuple(d.patch_size), foreground_fraction=d.foreground_fraction,
                                           label_fraction=d.label_fraction, augment=d.augment, seed=cfg.train.seed)
            preview_sampler = PatchSampler25D(self.data.val or self.data.train, slice_axis=d.slice_axis, context=k,
                                              patch_size=tuple(d.patch_size), foreground_fraction=1.0,
                                              label_fraction=0.5, augment=False, seed=cfg.train.seed + 1)
        self.preview = preview_sampler.batch(min(4, cfg.train.batch_size))
        params = method_params(cfg)
        self.method: Method = self.spec.build(params, in_channels=n_src * k, out_channels=1,
                                              patch_size=tuple(d.patch_size))
        self.method.to(self.device)
        amp = cfg.train.amp and self.device.type == "cuda"
        self.method.runtime = Runtime(self.device, torch.bfloat16 if amp else None)
        n_train = len(self.data.splits["train"])
        self.steps_per_epoch = max(1, math.ceil(d.patches_per_subject * n_train / cfg.train.batch_size))
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * self.steps_per_epoch
        self.step, self.epoch, self.best = 0, 0, None
        if self.resume:
            self._restore()
        else:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.write_config(cfg)
            self.run.write_json("normalization.json", self.data.norm.to_dict())
            self.run.write_json("splits.json", self.data.splits)
            files = [p for s in self.data.dataset.subjects.values() for p in s.files.values()]
            self.run.write_json("provenance.json", provenance(cfg, files))
        self._writer = None

    def _restore(self) -> None:
        path, bad = ckpt.latest_good(self.run.checkpoints)
        for p, why in bad:
            self._log(f"[yellow]skipping corrupt checkpoint[/] {p.name}: {why}")
        if path is None:
            if bad:
                raise CheckpointError(f"{self.run.checkpoints}: no checkpoint verifies ({bad[0][1]})")
            self._log("no checkpoint yet: starting from step 0")
            return
        weights, state = ckpt.load_checkpoint(path)
        self.load_state(weights, state)
        self.run.truncate_metrics(self.step)
        self._log(f"resumed from {path.name} (step {self.step}, epoch {self.epoch})")

    def load_state(self, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        for name, net in self.method.networks.items():
            if name not in weights:
                raise CheckpointError(f"checkpoint has no weights for network {name!r} (has {sorted(weights)})")
            net.load_state_dict(weights[name])
        for name, opt in self.method.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sch in self.method.schedulers.items():
            sch.load_state_dict(state["schedulers"][name])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.best = state.get("best") or None
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])

    def state(self) -> dict[str, Any]:
        return {"optimizers": {n: o.state_dict() for n, o in self.method.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.method.schedulers.items()},
                "step": self.step, "epoch": self.epoch, "best": self.best,
                "sampler": self.sampler.state_dict(), "rng": rng_state()}

    def save(self) -> Path:
        protect = {self.best["checkpoint"]} if self.best and self.best.get("checkpoint") else set()
        weights = ckpt.flatten_weights(dict(self.method.networks.items()))
        return ckpt.save_checkpoint(self.run.checkpoints, self.step, weights, self.state(),
                                    keep=self.cfg.train.keep_checkpoints, protect=protect, version=__version__)

    # ------------------------------------------------------------------------------------------
    def _next_batch(self) -> dict[str, torch.Tensor]:
        b = self.sampler.batch(self.cfg.train.batch_size)
        return {k: v.to(self.device, non_blocking=True) for k, v in b.items()}

    def _tensorboard(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run.path / "tensorboard"), purge_step=self.step + 1)
            except ImportError:  # tensorboard is optional
                self._writer = False
        return self._writer or None

    def _install_signals(self) -> dict[int, Any]:
        old = {}

        def handler(signum, frame):  # noqa: ARG001
            self._stop_signal = signal.Signals(signum).name

        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old[s] = signal.signal(s, handler)
            except ValueError:  # not in the main thread
                pass
        return old

    def fit(self) -> TrainResult:
        self.setup()
        cfg = self.cfg
        old_handlers = self._install_signals()
        t0 = time.monotonic()
        stopped = "done"
        sums: dict[str, float] = {}
        n_sum = 0
        progress = None
        try:
            if self.show_progress:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                                    console=self.console, transient=False, disable=self.console is None)
                progress.start()
                task = progress.add_task("train", total=self.total_steps, completed=self.step, losses="")
            self.method.train()
            while self.step < self.total_steps:
                losses = self.method.train_step(self._next_batch, self.step + 1)
                vals = torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(()) for v in losses.values()])
                if not bool(torch.isfinite(vals).all()):
                    bad = [k for k, v in zip(losses, vals.tolist()) if not math.isfinite(v)]
                    last = ckpt.list_checkpoints(self.run.checkpoints)
                    raise TrainingDiverged(
                        f"step {self.step + 1}: loss {', '.join(bad)} became NaN/Inf; training stopped. "
                        f"Last good checkpoint: {last[-1] if last else 'none'}. Lower the learning rates "
                        "(params.lr_*) or enable gradient clipping, then resume with --resume"
                    )
                self.step += 1
                for k, v in zip(losses, vals.tolist()):
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    rec = {"step": self.step, "epoch": self.epoch, "time_s": round(time.monotonic() - t0, 2),
                           **{k: v / n_sum for k, v in sums.items()},
                           **{f"lr/{n}": o.param_groups[0]["lr"] for n, o in self.method.optimizers.items()}}
                    self.run.append_metrics(rec)
                    w = self._tensorboard()
                    if w:
                        for k, v in rec.items():
                            if k not in ("step", "epoch"):
                                w.add_scalar(k, v, self.step)
                    if progress:
                        progress.update(task, losses=" ".join(f"{k.split('/')[-1]}={v / n_sum:.3g}" for k, v in list(sums.items())[:4]))
                    sums, n_sum = {}, 0
                if progress:
                    progress.update(task, completed=self.step)
                if self.step % self.steps_per_epoch == 0:
                    self.epoch += 1
                    self.method.epoch_end(self.epoch)
                    if cfg.train.validate and self.data.val and self.spec.predicts_volumes:
                        self.validate()
                if cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
                    self.save_samples()
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
                if self._stop_signal:
                    stopped = "interrupted"
                    break
                if cfg.train.minutes is not None and time.monotonic() - t0 > cfg.train.minutes * 60:
                    stopped = "minutes"
                    break
        finally:
            if progress:
                progress.stop()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self._writer:
                self._writer.close()
        if stopped == "done" and cfg.train.max_steps is not None:
            stopped = "max_steps"
        last = self.save()
        if self.best is None:  # no validation: the last checkpoint is the one to use
            self.run.write_json("best.json", {"checkpoint": last.name, "step": self.step, "metric": None})
        self.save_samples()
        if stopped == "interrupted":
            self._log(f"[yellow]stopped by {self._stop_signal}[/]: checkpoint saved at step {self.step}; "
                      f"continue with `medsyn train --resume {self.run.path}`")
        return TrainResult(self.run.path, self.step, stopped, self.best)

    # ------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Full-volume prediction of every validation subject; metrics in the target's units."""
        from medsyn.inference.predict import predict_case_arrays
        from medsyn.metrics import data_range_of, mae, psnr, ssim

        results = []
        tn = self.data.norm.target_normalizer()
        for raw, nc in zip(self.data.val_raw, self.data.val):
            pred_n, _ = predict_case_arrays(self.method, nc.source, self.cfg, self.device, context=self.context)
            pred = tn.inverse(pred_n)
            ref = raw.target.array.astype(np.float32)
            dr = data_range_of(ref, raw.mask)
            results.append({"mae": mae(pred, ref, mask=raw.mask), "psnr": psnr(pred, ref, data_range=dr, mask=raw.mask),
                            "ssim": ssim(pred, ref, data_range=dr, mask=raw.mask)})
        self.method.train()
        summary = {f"val/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}
        self.run.append_metrics({"step": self.step, "epoch": self.epoch, **summary})
        metric = self.cfg.train.val_metric
        key = f"val/{metric}"
        if key not in summary:
            raise ConfigError(f"config key 'train.val_metric': {metric!r} is not a validation metric (mae, psnr, ssim)")
        value = summary[key]
        better = (self.best is None or (value < self.best["value"] if metric == "mae" else value > self.best["value"]))
        if better:
            self.best = {"checkpoint": f"{ckpt.PREFIX}{self.step:08d}", "step": self.step, "metric": metric, "value": value}
            self.save()
            self.run.write_json("best.json", self.best)
        self._log(f"epoch {self.epoch} step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
        return summary

    @torch.no_grad()
    def save_samples(self) -> Path | None:
        """PNG grid of the preview patches: source | prediction | target | |error| | confidence."""
        from medsyn.reports.samples import save_sample_grid

        m = self.method
        if not self.spec.predicts_volumes:
            return m.save_samples(self.run.samples / f"step_{self.step:08d}.png", self.preview) if hasattr(m, "save_samples") else None
        was_training = m.training
        m.eval()
        x = self.preview["source"].to(self.device)
        y = self.preview["target"]
        pred = m.predict(x).float()
        conf = m.confidence(x, pred)
        m.train(was_training)
        centre = x[:, self.context // 2: self.context // 2 + 1].cpu()
        path = self.run.samples / f"step_{self.step:08d}.png"
        save_sample_grid(path, centre, pred.cpu(), y, None if conf is None else conf.float().cpu())
        return path


def train(cfg: RunConfig, out: str | Path, **kw: Any) -> TrainResult:
    return Trainer(cfg, out, **kw).fit()


def default_out(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"


Callback = Callable[[int, dict[str, float]], None]
