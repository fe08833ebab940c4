"""The training loop shared by every method.

One loop for any method: the method owns its networks, optimisers and step; the engine owns the
data feed, device, precision and processes, the epoch/learning-rate schedule calls, validation,
logging (metrics.jsonl, TensorBoard, PNG sample grids), checkpoints, resume, time budgets,
NaN detection and clean stops on Ctrl-C / SIGTERM (pre-emption: a checkpoint is saved first).

An *epoch* is ``data.patches_per_subject × n_train_subjects / (train.batch_size × world_size)``
generator updates (Nie et al. define epochs by sampled patches; every method here follows that).

Processes (see training/distributed.py): under ``torchrun`` every rank runs this loop on its
share of each global batch with DDP-wrapped networks; only rank 0 writes. Per step the ranks
agree (one small all-reduce) on the mean losses — what is logged and checked for NaN — and on
whether a stop signal or the time budget was hit, so they always stop at the same step.

Host memory: the Trainer tunes glibc's malloc once per process (allocator.py) so the
large tensors a step frees are reused by the next step instead of being unmapped and re-mapped
(page faults and kernel time); forked loader workers inherit the setting.

Data: the training and validation subjects are read, checked, normalised and cropped once into
the preprocessed cache (:mod:`medsyn.data.cache`; built by the first run, reused by the next) and
memory-mapped by the sampler, which cuts and pads each patch on its own — memory does not grow
with the dataset; nothing re-reads NIfTI during training. With ``train.num_workers > 0`` patches
are cut in forked loader workers reading the same files; sample ``i`` of the run is a function of
(seed, i) only, so batches — and resumed runs — are identical for any number of workers.

Precision: ``train.amp`` runs the methods' forward passes under bf16 autocast on CUDA (ignored
on CPU); bf16 has float32's range, so no loss scaling is needed, and methods compute gradient
penalties in float32 outside autocast (``Runtime.autocast(enabled=False)``). ``train.compile``
compiles the generator with ``torch.compile``; critics stay eager because a gradient penalty's
double backward is not supported through compiled graphs.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from medsyn import __version__
from medsyn.allocator import keep_freed_memory
from medsyn.config import RunConfig, config_hash, diff_configs, method_params, to_dict
from medsyn.data.dataset import split_notes
from medsyn.data.normalization import NormalizationState
from medsyn.data.pipeline import PreparedData, prepare_training_data
from medsyn.data.sampling import AXES, PatchSampler25D
from medsyn.errors import CheckpointError, ConfigError, MedsynError, OutputError
from medsyn.methods import METHODS, Method, Runtime
from medsyn.training import checkpoint as ckpt
from medsyn.training.budget import check_patches_fit, check_step_fits
from medsyn.training.progress import BarOrLines, duration, stamp
from medsyn.training.schedules import BudgetCosine
from medsyn.training.distributed import SINGLE, DistContext, params_fingerprint, resolve_device  # noqa: F401
from medsyn.training.run_dir import RunDir, provenance

#: config keys that may change on resume without --allow-config-change (budgets; loader workers,
#: which do not change a single sample)
RESUME_FREE_KEYS = {"max_steps", "minutes", "epochs", "num_workers", "cache_dir", "cache_workers"}


class TrainingDiverged(MedsynError):
    """A loss became NaN or infinite."""


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


# ----------------------------------------------------------------------------------------------
# Data feed: batches for the method's step, in this process or in loader workers
# ----------------------------------------------------------------------------------------------


def _seed_worker(seed: int, rank: int, worker_id: int) -> None:
    """Loader worker start: per-worker seeds for any library randomness (the sampler itself is
    counter-seeded), and SIGTERM/SIGINT ignored — a launcher or a terminal signals the whole
    process group; the training process stops the workers itself after saving its checkpoint."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    s = np.random.SeedSequence([seed & 0xFFFF_FFFF_FFFF_FFFF, rank, worker_id]).generate_state(2)
    random.seed(int(s[0]))
    np.random.seed(int(s[1]))
    torch.manual_seed(int(s[0]))


class _BatchStream(torch.utils.data.IterableDataset):
    """Worker w of W computes the global batches w, w + W, ... from ``start``: the DataLoader
    hands them back in order.

    Each worker writes its batches into a ring of ``slots`` shared-memory batches that it reuses,
    so a batch crosses to the training process as a slot number, not as fresh tensors: a
    DataLoader worker otherwise moves every result into new shared memory (allocate, fault in,
    copy), which the training process maps and unmaps again — for 10 × 5×144² patches (5.8 MB)
    that costs more than cutting them (benchmarks/README.md, data_scale.py). A slot's tensors
    cross once, on its first use. ``consumed[w]`` (shared) is the number of worker w's batches
    the training process has copied out; a worker never writes into a slot before the batch it
    held was copied out (with ``slots`` > the DataLoader's prefetch it never has to wait). A worker
    that waits stops when ``stop`` (shared) is set or the training process is gone: workers ignore
    SIGTERM, so one left waiting would outlive the DataLoader's shutdown.
    """

    def __init__(self, sampler: Any, batch_size: int, start: int, workers: int, slots: int):
        self.sampler, self.n, self.start, self.slots = sampler, batch_size, start, slots
        self.stride = batch_size * getattr(sampler, "world_size", 1)
        self.consumed = torch.zeros(workers, dtype=torch.int64).share_memory_()
        self.stop = torch.zeros(1, dtype=torch.int64).share_memory_()
        # samplers that can write into given tensors skip a copy (PatchSampler25D.batch_at(out=…))
        self.writes_into = "out" in inspect.signature(sampler.batch_at).parameters

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, every = (info.id, info.num_workers) if info is not None else (0, 1)
        parent, ring = os.getppid(), []
        for m in itertools.count():  # this worker's m-th batch: global batch w + m·W
            pos = self.start + (w + m * every) * self.stride
            j = m % self.slots
            if j == len(ring):  # the slot's first use: its tensors cross to the trainer once
                ring.append({k: v.share_memory_() for k, v in self.sampler.batch_at(pos, self.n).items()})
                yield pos, w, m, j, ring[j]
                continue
            while int(self.consumed[w]) <= m - self.slots:  # slot still being read: wait (a guard)
                if int(self.stop[0]) or os.getppid() != parent:  # feed closed, or the training process gone
                    return
                time.sleep(0.0005)
            if self.writes_into:
                self.sampler.batch_at(pos, self.n, out=ring[j])
            else:
                b = self.sampler.batch_at(pos, self.n)
                if b.keys() != ring[j].keys() or any(b[k].shape != ring[j][k].shape for k in b):
                    raise RuntimeError(f"{type(self.sampler).__name__}.batch_at gave batches of varying shapes")
                for k, v in b.items():
                    ring[j][k].copy_(v)
            yield pos, w, m, j, None


class BatchFeed:
    """``feed()`` → the next batch on the training device (what ``Method.train_step`` calls).

    With ``num_workers`` > 0 and a sampler that can draw a batch at a given position
    (``batch_at``, ``position``), batches are prepared ahead in loader workers, in shared-memory
    slots each worker reuses (:class:`_BatchStream`); ``feed()`` copies the batch out of its slot
    (onto the device). The sampler's position (saved in checkpoints) counts the batches
    *consumed*, so prefetching never skips or repeats a sample across a resume.
    """

    #: batches each worker prepares ahead (the DataLoader's prefetch_factor)
    PREFETCH = 2
    #: shared-memory batches per worker: more than PREFETCH + 1, so a worker never waits for a slot
    SLOTS = PREFETCH + 2

    def __init__(self, sampler: Any, batch_size: int, device: torch.device, *, num_workers: int = 0,
                 seed: int = 0, rank: int = 0):
        self.sampler, self.n, self.device = sampler, batch_size, device
        self.num_workers, self.seed, self.rank = num_workers, seed, rank
        self.parallel = num_workers > 0 and hasattr(sampler, "batch_at") and hasattr(sampler, "position")
        self._loader = None
        self._it = None
        self._stream: _BatchStream | None = None
        self._slots: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def __call__(self) -> dict[str, torch.Tensor]:
        if not self.parallel:
            b = self.sampler.batch(self.n)
            return {k: v.to(self.device, non_blocking=True) for k, v in b.items()}
        if self._it is None:
            self._start()
        pos, w, m, j, fresh = next(self._it)
        if pos != self.sampler.position:  # a bug, not a user error
            raise RuntimeError(f"loader produced the batch at {pos}, expected {self.sampler.position}")
        if fresh is not None:
            self._slots[w, j] = fresh
        # a copy the step owns (the slot is rewritten by the worker once it is released)
        b = {k: v.clone() if self.device.type == "cpu" else v.to(self.device) for k, v in self._slots[w, j].items()}
        self._stream.consumed[w] = m + 1  # slot j of worker w may be rewritten
        self.sampler.position = pos + self.n * getattr(self.sampler, "world_size", 1)
        return b

    def _start(self) -> None:
        import multiprocessing

        self._stream = _BatchStream(self.sampler, self.n, self.sampler.position, self.num_workers, self.SLOTS)
        self._slots = {}
        # fork where it exists (Linux): workers share the in-memory volumes copy-on-write and are
        # children of this process (they exit with it, even after SIGKILL) — also when the default
        # start method was changed (e.g. a process started by a forkserver)
        context = "fork" if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods() else None
        self._loader = torch.utils.data.DataLoader(
            self._stream, batch_size=None, num_workers=self.num_workers, prefetch_factor=self.PREFETCH,
            multiprocessing_context=context, worker_init_fn=functools.partial(_seed_worker, self.seed, self.rank),
            # its own generator: the loader's base seed must not be drawn from the global torch RNG,
            # whose stream the method's step uses (e.g. WGAN-GP interpolation) and checkpoints restore
            generator=torch.Generator().manual_seed(self.seed))
        self._it = iter(self._loader)

    def close(self) -> None:
        """Stop the workers (a later call starts new ones at the sampler's position)."""
        it, self._it, self._loader, stream, self._stream, self._slots = self._it, None, None, self._stream, None, {}
        if stream is not None:
            stream.stop[0] = 1  # a worker waiting for a slot returns
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __del__(self) -> None:
        self.close()


# ----------------------------------------------------------------------------------------------


class Trainer:
    """Builds data, method and run folder from a resolved :class:`RunConfig`, then trains.

    ``dist`` is this process's :class:`~medsyn.training.distributed.DistContext` (a single
    process by default); ``launch_train`` passes the one made from torchrun's environment.
    """

    def __init__(self, cfg: RunConfig, out: str | Path, *, resume: bool = False, allow_config_change: bool = False,
                 console: Any = None, progress: bool = True, dist: DistContext | None = None):
        keep_freed_memory()  # large tensors reused from the heap, not re-mapped every step (allocator.py)
        self.cfg, self.run = cfg, RunDir(out)
        self.resume, self.allow_config_change = resume, allow_config_change
        self.dist = dist or SINGLE
        self.console = console if self.dist.is_main else None
        self.show_progress = progress
        self.spec = METHODS.get(cfg.method, key="method")
        self._stop_signal: str | None = None
        self._config_changes: list[str] = []
        self.feed: BatchFeed | None = None
        self._writer = None

    # ------------------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg, soft_wrap=True)  # one line each in a log file (no wrapping at 80 columns)

    def _check_run_folder(self) -> dict[str, Any] | None:
        """Fresh run: refuse a folder holding another run. Resume: compare configs; return None."""
        if self.resume:
            if not self.run.exists():
                raise CheckpointError(f"{self.run.path}: nothing to resume (no config.yaml); start a run with --out")
            old = to_dict(self.run.read_config())
            new = to_dict(self.cfg)
            diffs = [d for d in diff_configs(old, new) if d.split(":")[0].split(".")[-1] not in RESUME_FREE_KEYS]
            if diffs and not self.allow_config_change:
                raise ConfigError(
                    f"{self.run.config_path}: the config differs from the run's ({'; '.join(diffs[:8])}); "
                    "pass --allow-config-change to resume anyway"
                )
            if diffs:
                self._log("[yellow]resuming with a changed config:[/] " + "; ".join(diffs))
            self._config_changes = diffs
            return None
        if self.run.has_content():
            raise ConfigError(
                f"{self.run.path}: folder exists and is not empty; choose a new --out, or resume it with --resume {self.run.path}"
            )
        return None

    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        dist.agree(self._check_run_folder)
        self.device = dist.device if dist.device is not None else resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        norm = None
        if self.resume:
            norm = dist.agree(lambda: NormalizationState.from_dict(self.run.read_json("normalization.json")))
        self.data: PreparedData = self._prepare_data(norm)
        check_patches_fit(cfg, self.spec, self.data.train)
        d = cfg.data
        n_src = len(d.source)
        k = d.context_slices if self.spec.sample_kind == "2.5d" else 1
        self.context = k
        self.sampler = dist.agree(self._make_sampler)
        self.preview = self._preview_batch() if dist.is_main else None
        params = method_params(cfg)
        self.method: Method = self.spec.build(params, in_channels=n_src * k, out_channels=1,
                                              patch_size=tuple(d.patch_size))
        self.method.to(self.device)
        check_step_fits(cfg, self.spec, self.method, n_src * k, self.device)  # before any file is written
        self.method.before_training()  # e.g. MedGAN's VGG-19 file: fail before the run folder exists
        amp = cfg.train.amp and self.device.type == "cuda"
        if cfg.train.amp and not amp:
            self._log("train.amp: bf16 autocast is for CUDA; training in float32 on the CPU")
        self.method.runtime = Runtime(self.device, torch.bfloat16 if amp else None)
        n_train = len(self.data.splits["train"])
        self.global_batch = cfg.train.batch_size * dist.world_size
        self.steps_per_epoch = max(1, math.ceil(d.patches_per_subject * n_train / self.global_batch))
        self.total_steps = cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * self.steps_per_epoch
        # train.lr_schedule "cosine": the engine sets every rate before each step (replacing the method's decay)
        self.lr_schedule = (BudgetCosine(self.method.optimizers, minutes=cfg.train.minutes, total_steps=self.total_steps)
                            if cfg.train.lr_schedule == "cosine" else None)
        self.step, self.epoch, self.best = 0, 0, None
        restored = False
        if self.resume:
            dist.agree(self._set_aside_corrupt_checkpoints)
            restored = dist.agree(self._restore)
        else:
            dist.agree(self._init_run_folder)
        if dist.enabled and not restored:
            seed_everything(cfg.train.seed + dist.rank)  # per-rank streams (GP interpolation, dropout)
        self.feed = BatchFeed(self.sampler, cfg.train.batch_size, self.device, num_workers=cfg.train.num_workers,
                              seed=cfg.train.seed, rank=dist.rank)
        if cfg.train.num_workers > 0 and not self.feed.parallel:
            self._log(f"train.num_workers: {type(self.sampler).__name__} draws batches in order; loading in this process")

    def _prepare_data(self, norm: NormalizationState | None) -> PreparedData:
        """The training/validation subjects from the preprocessed cache (built when missing;
        a user error on any rank is raised on every rank)."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by file
            return prepare_training_data(self.cfg.data, norm, dist=self.dist, log=self._log)

    def _make_sampler(self) -> Any:
        """The training sampler, sharded for this rank."""
        cfg, d, dist = self.cfg, self.cfg.data, self.dist
        seed = cfg.train.seed
        if self.spec.make_sampler is not None:
            sampler = self.spec.make_sampler(cfg, self.data, seed)
            if dist.enabled:
                if hasattr(sampler, "shard"):
                    sampler.shard(dist.rank, dist.world_size)
                else:  # a sampler with one stream: each rank draws its own
                    sampler = self.spec.make_sampler(cfg, self.data, seed + 7919 * dist.rank)
            return sampler
        return PatchSampler25D(self.data.train, slice_axis=d.slice_axis, context=self.context,
                               patch_size=tuple(d.patch_size), foreground_fraction=d.foreground_fraction,
                               label_fraction=d.label_fraction, augment=d.augment, flip=d.flip, seed=seed,
                               rank=dist.rank, world_size=dist.world_size)

    def _preview_batch(self) -> dict[str, torch.Tensor]:
        cfg, d = self.cfg, self.cfg.data
        seed = cfg.train.seed + 1
        if self.spec.make_sampler is not None:
            sampler = self.spec.make_sampler(cfg, self.data, seed)
        else:
            sampler = PatchSampler25D(self.data.val or self.data.train, slice_axis=d.slice_axis, context=self.context,
                                      patch_size=tuple(d.patch_size), foreground_fraction=1.0,
                                      label_fraction=0.5, augment=False, seed=seed)
        return sampler.batch(min(4, cfg.train.batch_size))

    def _init_run_folder(self) -> None:
        """Rank 0 writes the run's files; config.yaml last (it marks a run that can be resumed).
        On a failed write nothing is left behind."""
        if not self.dist.is_main:
            return
        cfg, path = self.cfg, self.run.path
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{path}: cannot create the run folder ({e.strerror or e}); choose a writable --out") from None
        written = []
        try:
            for name, obj in (("normalization.json", self.data.norm.to_dict()), ("splits.json", self.data.splits),
                              ("provenance.json", self._provenance())):
                written.append(path / name)
                self.run.write_json(name, obj)
            written.append(self.run.config_path)
            self.run.write_config(cfg)
        except BaseException:
            for f in written:
                f.unlink(missing_ok=True)
            if created:
                try:
                    path.rmdir()
                except OSError:
                    pass
            raise

    def _provenance(self) -> dict[str, Any]:
        files = [p for s in self.data.dataset.subjects.values() for p in s.files.values()]
        prov = provenance(self.cfg, files)
        t, dist = self.cfg.train, self.dist
        prov["training"] = {"world_size": dist.world_size, "backend": dist.backend, "device": str(self.device),
                            "batch_size_per_process": t.batch_size, "global_batch": self.global_batch,
                            "learning_rates": "as configured, not rescaled with the global batch",
                            "amp_dtype": str(self.method.runtime.amp_dtype).replace("torch.", "") if self.method.runtime.amp_dtype else None,
                            "compile": t.compile, "num_workers": t.num_workers}
        prov["split_notes"] = split_notes(self.data.splits)
        return prov

    # -- resume ----------------------------------------------------------------------------------
    def _set_aside_corrupt_checkpoints(self) -> None:
        """Rank 0: checkpoints newer than the newest good one are renamed ``corrupt-step_…``
        (else pruning would keep them and delete good ones); raise when none verifies."""
        if not self.dist.is_main:
            return
        root = self.run.checkpoints
        ckpt.recover(root)
        good, bad = ckpt.latest_good(root)
        if good is None:
            if bad:
                raise CheckpointError(f"{self.run.checkpoints}: no checkpoint verifies; newest: {bad[0][1]}. "
                                      "Restore the folder from a backup or start a new run")
            return
        for p, why in bad:
            dest = ckpt.quarantine(p)
            self._log(f"[yellow]checkpoint {p.name} is corrupt[/] ({why}); moved to {dest.name}. "
                      f"Resuming from the previous good checkpoint, {good.name}")

    def _restore(self) -> bool:
        """Load the newest checkpoint; False when the run has none yet."""
        ckpts = ckpt.list_checkpoints(self.run.checkpoints)
        if not ckpts:
            self._log("no checkpoint yet: starting from step 0")
            if self.dist.is_main:
                self._record_config_changes()
            return False
        path = ckpts[-1]
        try:
            weights, state = ckpt.load_checkpoint(path)
            self.load_state(weights, state, source=path)
        except CheckpointError as e:
            older = next((p for p in reversed(ckpts[:-1]) if _verifies(p)), None)
            offer = (f"; the previous good checkpoint is {older.name}: move {path.name} out of {self.run.checkpoints} "
                     "to resume from it" if older is not None else "")
            raise CheckpointError(f"{e}{offer}") from None
        if self.dist.is_main:
            self.run.truncate_metrics(self.step)
            self._record_config_changes()
        self._log(f"resumed from {path.name} (step {self.step}, epoch {self.epoch})")
        return True

    def _record_config_changes(self) -> None:
        """After an allowed config change: config.yaml describes the run from now on, and
        config_changes.json lists what changed at which step."""
        if not getattr(self, "_config_changes", None):
            return
        path = self.run.path / "config_changes.json"
        history = self.run.read_json(path.name) if path.is_file() else []
        self.run.write_json(path.name, [*history, {"step": self.step, "changes": self._config_changes}])
        self.run.write_config(self.cfg)

    def load_state(self, weights: dict[str, dict[str, torch.Tensor]], state: dict[str, Any],
                   source: Path | str = "checkpoint") -> None:
        """Networks, optimisers, schedulers, step/epoch, sampler position and RNGs of this rank."""
        for name, net in self.method.networks.items():
            if name not in weights:
                raise CheckpointError(f"{source}: no weights for network {name!r} (has {sorted(weights)})")
            try:
                net.load_state_dict(weights[name])
            except RuntimeError as e:
                raise CheckpointError(f"{source}: weights of {name!r} do not fit the configured network "
                                      f"({str(e).splitlines()[0][:160]}); was the architecture changed?") from None
        try:
            for name, opt in self.method.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
            for name, sch in self.method.schedulers.items():
                sch.load_state_dict(state["schedulers"][name])
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            if self.lr_schedule is not None and state.get("lr_schedule") is not None:
                self.lr_schedule.load_state_dict(state["lr_schedule"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: training state incomplete or incompatible ({type(e).__name__}: {e})") from None
        if self.lr_schedule is not None and self.lr_schedule.progress > 0.95:
            self._log(f"[yellow]train.lr_schedule cosine: {self.lr_schedule.progress:.0%} of the schedule was done[/]; "
                      "the resumed run anneals only the rest (learning rates near 0). To train on at higher rates, start "
                      "a new run from these weights or resume with --set train.lr_schedule=method --allow-config-change")
        self.best = state.get("best") or None
        dist = self.dist
        try:
            per_rank = state.get("per_rank") or [{"sampler": state["sampler"], "rng": state["rng"]}]
            if len(per_rank) == dist.world_size:
                mine = per_rank[dist.rank]
                self._load_sampler(mine["sampler"], source)
                set_rng_state(mine["rng"])
                return
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: sampler/RNG state incomplete or incompatible ({type(e).__name__}: {e})") from None
        self._log(f"[yellow]the checkpoint was written by {len(per_rank)} process(es), this run has "
                  f"{dist.world_size}[/]: the global batch changes and the run does not continue bit-for-bit")
        if hasattr(self.sampler, "batch_at"):  # one shared stream: continue at its position
            self._load_sampler(per_rank[0]["sampler"], source)
        seed_everything(self.cfg.train.seed + 1_000_003 * self.step + dist.rank)

    def _load_sampler(self, state: dict[str, Any], source: Path | str) -> None:
        try:
            self.sampler.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{source}: sampler state cannot be restored ({e})") from None

    def state(self, per_rank: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything to continue: optimisers, schedulers, step/epoch, best, and per rank the
        sampler position and every RNG (python, numpy, torch, CUDA)."""
        per_rank = per_rank or [{"sampler": self.sampler.state_dict(), "rng": rng_state()}]
        return {"optimizers": {n: o.state_dict() for n, o in self.method.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.method.schedulers.items()},
                "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule is not None else None,
                "step": self.step, "epoch": self.epoch, "best": self.best,
                "sampler": per_rank[0]["sampler"], "rng": per_rank[0]["rng"],
                "world_size": len(per_rank), "per_rank": per_rank}

    def save(self) -> Path:
        """A checkpoint at the current step (a collective: every rank calls it, rank 0 writes)."""
        dist = self.dist
        local: dict[str, Any] = {"sampler": self.sampler.state_dict(), "rng": rng_state()}
        fingerprint = params_fingerprint(dict(self.method.networks.items())) if dist.enabled else None
        gathered = dist.all_gather_object((local, fingerprint))
        per_rank = [g[0] for g in gathered]
        prints = [g[1] for g in gathered]
        final = self.run.checkpoints / f"{ckpt.PREFIX}{self.step:08d}"

        def write() -> Path:
            if not dist.is_main:
                return final
            if dist.enabled and len(set(prints)) > 1:
                self._log(f"[red]step {self.step}: the ranks' parameters differ[/] ({prints}); this is a bug")
            protect = {self.best["checkpoint"]} if self.best and self.best.get("checkpoint") else set()
            weights = ckpt.flatten_weights(dict(self.method.networks.items()))
            extra = {"config_hash": config_hash(self.cfg), "world_size": dist.world_size,
                     "params_sha256_per_rank": prints if dist.enabled else None}
            return ckpt.save_checkpoint(self.run.checkpoints, self.step, weights, self.state(per_rank),
                                        keep=self.cfg.train.keep_checkpoints, protect=protect, version=__version__,
                                        extra=extra)

        return dist.agree(write)

    # ------------------------------------------------------------------------------------------
    def _next_batch(self) -> dict[str, torch.Tensor]:
        return self.feed()

    def _wrap_networks(self) -> None:
        """DDP around every trained network (several processes) and torch.compile around the
        generator (``train.compile``); the method calls them through ``Method.net``."""
        t = self.cfg.train
        if not (self.dist.enabled or t.compile):
            return
        generator = getattr(self.method, "generator_name", "G")

        def wrap(name: str, module: torch.nn.Module) -> torch.nn.Module:
            net = self.dist.wrap(module, find_unused_parameters=t.find_unused_parameters)
            if t.compile and name == generator:
                net = torch.compile(net)
            return net

        self.method.wrap(wrap)

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

    def _agree_on_step(self, vals: torch.Tensor, t0: float) -> tuple[torch.Tensor, bool, bool, float]:
        """Mean losses over the ranks, whether any rank got a stop signal / ran out of time, and the
        ranks' mean elapsed seconds (what the next step's learning rate is computed from, so every
        rank sets the same rate)."""
        elapsed = time.monotonic() - t0
        if not self.dist.enabled:
            return vals, False, False, elapsed
        minutes = self.cfg.train.minutes
        flags = torch.tensor([self._stop_signal is not None, minutes is not None and elapsed > minutes * 60, elapsed],
                             dtype=torch.float64)
        total = self.dist.all_reduce_sum(torch.cat([vals.to(torch.float64), flags]))
        n, w = vals.numel(), self.dist.world_size
        return (total[:n] / w).to(torch.float32), bool(total[n] > 0), bool(total[n + 1] > 0), float(total[n + 2]) / w

    def fit(self) -> TrainResult:
        t_setup = time.monotonic()
        self._log(f"{stamp()} preparing data: the subjects of {self.cfg.data.root} are read, checked and normalised "
                  "into the preprocessed cache once, then read memory-mapped")
        self.setup()
        self._log(f"{stamp()} data ready in {duration(time.monotonic() - t_setup)}: {len(self.data.splits.get('train') or [])} "
                  f"training, {len(self.data.splits.get('val') or [])} validation subject(s); steps {self.step} → {self.total_steps}")
        for note in split_notes(self.data.splits):
            self._log(f"[yellow]splits:[/] {note}")
        self._wrap_networks()
        cfg, main = self.cfg, self.dist.is_main
        old_handlers = self._install_signals()
        t0 = time.monotonic()
        stopped = "done"
        sums: dict[str, float] = {}
        n_sum = 0
        progress = None
        try:
            if self.show_progress and self.console is not None:  # a bar on a terminal, timestamped lines in a log
                budget = cfg.train.minutes * 60 if cfg.train.minutes is not None else None
                progress = BarOrLines("train", self.total_steps, self.console, start=self.step,
                                      deadline=t0 + budget if budget is not None else None)
            self.method.train()
            if self.lr_schedule is not None:
                self.lr_schedule.start(self.step)
            while self.step < self.total_steps:
                if self.lr_schedule is not None:
                    self.lr_schedule.apply()
                losses = self.method.train_step(self.feed, self.step + 1)
                vals = torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().cpu().reshape(()) for v in losses.values()])
                vals, signal_any, time_any, elapsed = self._agree_on_step(vals, t0)
                if not bool(torch.isfinite(vals).all()):
                    bad = [k for k, v in zip(losses, vals.tolist()) if not math.isfinite(v)]
                    last = ckpt.list_checkpoints(self.run.checkpoints)
                    raise TrainingDiverged(
                        f"step {self.step + 1}: loss {', '.join(bad)} became NaN/Inf; training stopped. "
                        f"Last good checkpoint: {last[-1] if last else 'none'}. Lower the learning rates "
                        "(params.lr_*) or enable gradient clipping, then resume with --resume"
                    )
                self.step += 1
                if self.lr_schedule is not None:  # the ranks agree on elapsed: they set the same rates
                    self.lr_schedule.update(self.step, elapsed)
                for k, v in zip(losses, vals.tolist()):
                    sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    rec = {"step": self.step, "epoch": self.epoch, "time_s": round(time.monotonic() - t0, 2),
                           **{k: v / n_sum for k, v in sums.items()},
                           **{f"lr/{n}": o.param_groups[0]["lr"] for n, o in self.method.optimizers.items()}}
                    if main:
                        self.run.append_metrics(rec)
                        w = self._tensorboard()
                        if w:
                            for k, v in rec.items():
                                if k not in ("step", "epoch"):
                                    w.add_scalar(k, v, self.step)
                    if progress:
                        progress.set_extra(" ".join(f"{k}={v / n_sum:.3g}" for k, v in list(sums.items())[:6]))
                    sums, n_sum = {}, 0
                if progress:
                    progress.update(self.step)
                if self.step % self.steps_per_epoch == 0:
                    self.epoch += 1
                    self.method.epoch_end(self.epoch)
                    if cfg.train.validate and self.data.val and self.spec.predicts_volumes:
                        self.validate()
                if cfg.train.sample_every and self.step % cfg.train.sample_every == 0:
                    self.save_samples()
                if cfg.train.checkpoint_every and self.step % cfg.train.checkpoint_every == 0:
                    self.save()
                if self.dist.enabled:
                    stop_now, out_of_time = signal_any, time_any
                else:
                    stop_now = self._stop_signal is not None
                    out_of_time = cfg.train.minutes is not None and time.monotonic() - t0 > cfg.train.minutes * 60
                if stop_now:
                    stopped = "interrupted"
                    break
                if out_of_time:
                    stopped = "minutes"
                    break
        finally:
            if progress:
                progress.stop()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self._writer:
                self._writer.close()
            if self.feed is not None:
                self.feed.close()
        if stopped == "done" and cfg.train.max_steps is not None:
            stopped = "max_steps"
        last = self.save()
        if main and self.best is None:  # no validation: the last checkpoint is the one to use
            self.run.write_json("best.json", {"checkpoint": last.name, "step": self.step, "metric": None})
        self.save_samples()
        if stopped == "interrupted":
            self._log(f"[yellow]stopped by {self._stop_signal or 'a signal to another process'}[/]: checkpoint saved "
                      f"at step {self.step}; continue with `medsyn train --resume {self.run.path}`")
        return TrainResult(self.run.path, self.step, stopped, self.best)

    # ------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Prediction of a fixed set of validation slices (``train.val_slices``); metrics in the
        target's units.

        Rank 0 validates; every rank then takes part in the checkpoint of a new best."""
        summary = self.dist.agree(self._validate_main)
        better = self.dist.broadcast_object(summary is not None and self._is_better(summary))
        if better:
            metric = self.cfg.train.val_metric
            self.best = {"checkpoint": f"{ckpt.PREFIX}{self.step:08d}", "step": self.step, "metric": metric,
                         "value": summary[f"val/{metric}"] if summary else None}
            self.save()
            if self.dist.is_main:
                self.run.write_json("best.json", self.best)
        return summary or {}

    def _is_better(self, summary: dict[str, float]) -> bool:
        metric = self.cfg.train.val_metric
        value = summary[f"val/{metric}"]
        return self.best is None or (value < self.best["value"] if metric == "mae" else value > self.best["value"])

    def _validate_main(self) -> dict[str, float] | None:
        """``train.val_slices`` fixed slices of the validation subjects, read from the cache and
        predicted with the inference sliding window; metrics in the target's units inside the mask,
        per subject (data range: the subject's full target range in the mask), then averaged."""
        if not self.dist.is_main:
            return None
        from medsyn.data.cache import validation_slices
        from medsyn.inference.predict import predict_case_arrays
        from medsyn.metrics import mae, psnr, ssim

        results = []
        tn = self.data.norm.target_normalizer()
        ax = AXES[self.cfg.data.slice_axis]
        for case, slices in validation_slices(self.data.val, self.cfg.train.val_slices):
            x = np.moveaxis(case.stacks(slices, self.context), 1, 1 + ax)  # slices along the slice axis
            pred_n, _ = predict_case_arrays(self.method, x, self.cfg, self.device, context=1)
            pred = np.moveaxis(tn.inverse(np.moveaxis(pred_n, ax, 0)), 0, -1)  # (A, B, n)
            ref = np.moveaxis(np.asarray(case.target[slices], dtype=np.float32), 0, -1)
            mask = np.moveaxis(np.asarray(case.mask[slices]), 0, -1)
            dr = case.meta["target_range_in_mask"] or 1.0
            results.append({"mae": mae(pred, ref, mask=mask), "psnr": psnr(pred, ref, data_range=dr, mask=mask),
                            "ssim": ssim(pred, ref, data_range=dr, mask=mask)})
        self.method.train()
        summary = {f"val/{k}": float(np.mean([r[k] for r in results])) for k in results[0]}
        self.run.append_metrics({"step": self.step, "epoch": self.epoch, **summary})
        metric = self.cfg.train.val_metric
        key = f"val/{metric}"
        if key not in summary:
            raise ConfigError(f"config key 'train.val_metric': {metric!r} is not a validation metric (mae, psnr, ssim)")
        self._log(f"epoch {self.epoch} step {self.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
        return summary

    @torch.no_grad()
    def save_samples(self) -> Path | None:
        """PNG grid of the preview patches: source | prediction | target | |error| | confidence (rank 0)."""
        from medsyn.reports.samples import save_sample_grid

        if not self.dist.is_main:
            return None
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


def _verifies(path: Path) -> bool:
    try:
        ckpt.verify_checkpoint(path)
        return True
    except CheckpointError:
        return False
