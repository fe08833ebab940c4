"""Processes and devices: one training process, or many under ``torchrun`` (DistributedDataParallel).

Single node, N GPUs (or N CPU processes)::

    torchrun --nproc_per_node=N -m medsyn train CONFIG [--set ...] --out RUN

Several nodes (run on every node; same ``--rdzv-endpoint``, the run folder and data on a
shared filesystem)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-id=JOB \\
             --rdzv-endpoint=HOST0:29500 -m medsyn train CONFIG --out /shared/RUN

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`launch_train` reads them,
initialises the process group (NCCL when the processes train on CUDA, gloo on CPU), gives each
process ``cuda:LOCAL_RANK``, and hands a :class:`DistContext` to the training engine. Everything
that depends on the rank lives here and in ``training/engine.py``; methods never test the rank.

Batch and learning rates
------------------------
``train.batch_size`` is per process: one step consumes a global batch of
``batch_size × world_size`` samples (rank r draws its share of one shared, counter-seeded
sample stream, so N processes × batch b see exactly the samples one process × batch N·b
would), and DDP averages the gradients over the ranks — the step equals a single-process step
on the global batch. An epoch stays defined by samples (``patches_per_subject × n_train``), so
it has ``world_size`` times fewer steps. Learning rates are **not** rescaled: the papers'
rates were tuned for their batch size, GAN training is sensitive to the balance between the
generator's and the critics' rates, and linear scaling rules (Goyal et al.) are a heuristic
for SGD on classification. Scale them yourself (``--set params.lr_g=...``) if you change the
global batch.

Only rank 0 writes (run folder, logs, TensorBoard, samples, checkpoints); the other ranks
take part in the collective steps (the RNG-state gather at a checkpoint, the per-step
agreement on losses, stop signals and time budget) and read the run folder on resume.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from medsyn import errors
from medsyn.config import RunConfig
from medsyn.errors import ConfigError, MedsynError

T = TypeVar("T")

#: how long a rank waits in a collective for the others (rank 0 validates full volumes alone)
TIMEOUT = datetime.timedelta(hours=2)


def resolve_device(name: str, key: str = "config key 'train.device'") -> torch.device:
    """``train.device`` (or a command's ``--device``, named by ``key`` in errors) → a torch device:
    ``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key}: {name!r} requested but no CUDA device is available; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None


@dataclass
class DistContext:
    """Rank, world size and device of this process; the collectives the engine needs.

    The default object is a single process (rank 0 of 1): every collective is then a no-op,
    so the engine runs the same code with or without ``torchrun``.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device | None = None  # set by :func:`init_from_env` (cuda:LOCAL_RANK or cpu)
    _initialised: bool = field(default=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes."""
        return self.rank == 0

    # -- collectives (no-ops for a single process) ---------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (trusted in-job pickling, never from files)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a small float tensor (returned on the tensor's device)."""
        if not self.enabled:
            return values
        dev = self.device if self.backend == "nccl" else torch.device("cpu")
        buf = values.detach().to(dev, torch.float64).clone()
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
        return buf.to(values.device)

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raises a user error on any rank, raise it on all.

        Without this, a rank that fails alone (a missing file, a full disk on rank 0) would leave
        the others waiting in the next collective until the timeout.
        """
        err: MedsynError | None = None
        result: Any = None
        try:
            result = fn()
        except MedsynError as e:
            err = e
        if self.enabled:
            outcomes = self.all_gather_object(None if err is None else (type(err).__name__, str(err)))
            first = next((o for o in outcomes if o is not None), None)
            if first is not None and err is None:
                cls = getattr(errors, first[0], MedsynError)
                raise (cls if isinstance(cls, type) and issubclass(cls, MedsynError) else MedsynError)(first[1])
        if err is not None:
            raise err
        return result

    # -- networks --------------------------------------------------------------------------------
    def wrap(self, module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` in DistributedDataParallel (or unchanged for a single process).

        DDP averages the gradients over the ranks during ``backward`` and broadcasts rank 0's
        buffers (BatchNorm statistics, spectral-norm vectors) at each forward. Several optimisers
        (one DDP per network), networks frozen for another network's step and the WGAN-GP double
        backward (``autograd.grad(create_graph=True)`` through the critic, then one ``backward``)
        all work: each parameter's gradient is reduced once per ``backward``.
        """
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, output_device=ids[0] if ids else None,
                   find_unused_parameters=find_unused_parameters)

    def close(self) -> None:
        """Leave the process group together with the other ranks.

        A barrier first, so no rank tears its gloo/NCCL connections down while another still
        sends; then ``destroy_process_group``. A failed barrier (a rank already gone) is not an
        error here: the group is destroyed anyway.
        """
        if self._initialised and torch.distributed.is_initialized():
            try:
                torch.distributed.barrier()
            except Exception:  # noqa: BLE001 — shutting down; the group is destroyed below either way
                pass
            torch.distributed.destroy_process_group()
            self._initialised = False
            _DIST_USED.append(True)


SINGLE = DistContext()
_DIST_USED: list[bool] = []  # set once this process has run (and closed) a process group


def exit_after_distributed(rc: int) -> int:
    """Under torchrun, end a worker process that used a process group without interpreter teardown.

    DDP's reducers keep references to the (destroyed) process group, and gloo's C++ worker
    threads can then be destroyed during interpreter finalisation, which aborts the process
    (``terminate called without an active exception``, SIGABRT) after all work and every
    checkpoint are written — torchrun then reports the whole job as failed. Everything is
    flushed, then ``os._exit(rc)``. Returns ``rc`` unchanged in any other process.
    """
    if not _DIST_USED or env_world_size() <= 1:
        return rc
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 — a closed pipe must not change the exit code
            pass
    os._exit(rc)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(device_name: str = "auto") -> DistContext:
    """The process's context from torchrun's environment; starts the process group when N > 1.

    Device: with N > 1 and a CUDA ``train.device`` (or ``auto`` on a GPU machine), each process
    uses ``cuda:LOCAL_RANK`` and the NCCL backend; on CPU, gloo. A single process uses
    ``train.device`` as given.
    """
    world = env_world_size()
    if world <= 1:
        return DistContext(device=resolve_device(device_name))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device_name)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices on this node; "
                              "lower torchrun's --nproc_per_node")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    kw: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
    if backend == "nccl":
        kw["device_id"] = dev
    torch.distributed.init_process_group(**kw)
    return DistContext(rank, local, world, backend, dev, _initialised=True)


def params_fingerprint(networks: dict[str, nn.Module]) -> str:
    """sha256 of every parameter's bytes: equal on all ranks while DDP keeps them in step."""
    h = hashlib.sha256()
    for name, net in networks.items():
        for k, p in net.named_parameters():
            h.update(f"{name}.{k}".encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    return h.hexdigest()


def launch_train(cfg: RunConfig, out: str | Path, **kw: Any) -> Any:
    """Train in this process — one of ``torchrun``'s when ``WORLD_SIZE`` > 1.

    Returns the :class:`~medsyn.training.engine.TrainResult` on rank 0 and None on the other
    ranks (which print nothing). Rank 0 holds the run folder's :class:`RunLock` meanwhile: a second
    ``medsyn train --out`` (or ``--resume``) into the same folder is refused.
    """
    from medsyn.training.run_dir import RunLock

    main = int(os.environ.get("RANK", "0")) == 0
    if not main:  # rank 0 holds the run folder for all ranks
        return _launch_train(cfg, out, **kw)
    with RunLock(out, create=not kw.get("resume", False)):
        return _launch_train(cfg, out, **kw)


def _launch_train(cfg: RunConfig, out: str | Path, **kw: Any) -> Any:
    from medsyn.methods import METHODS
    from medsyn.training.engine import Trainer  # late import: the engine imports this module

    spec = METHODS.get(cfg.method, key="method")
    if spec.pipeline is not None:  # multi-stage methods (Qu et al.) run their stages with the Trainer
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"method {cfg.method!r} is a multi-stage pipeline and runs in one process; "
                              "start it without torchrun")
        return spec.pipeline(cfg, out, **kw)
    ctx = init_from_env(cfg.train.device)
    trainer = None
    try:
        if not ctx.is_main:
            kw["console"] = None
        trainer = Trainer(cfg, out, dist=ctx, **kw)
        result = trainer.fit()
    finally:
        if ctx.enabled:  # drop the DDP wrappers (and their reducers) before the group goes
            del trainer
            import gc

            gc.collect()
        ctx.close()
    return result if ctx.is_main else None
