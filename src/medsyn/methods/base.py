"""What a method is: networks + optimisers + one training step, found by name.

A method file (one per paper) defines a config dataclass with every paper hyper-parameter as a
named default, a :class:`Method` subclass holding the networks and the step, and registers one
:class:`MethodSpec` per published variant (baselines are the same class with other defaults).
The training engine (medsyn.training) owns the loop, devices, precision, checkpoints and
processes; a method never tests the rank or moves data between devices itself.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from medsyn.config import from_dict, to_dict
from medsyn.registry import Registry

Batch = dict[str, torch.Tensor]


@dataclass
class Runtime:
    """Device and precision, owned by the engine and handed to the method."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp_dtype: torch.dtype | None = None  # torch.bfloat16 on CUDA when train.amp is on

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """Autocast for the forward passes; ``enabled=False`` forces float32 (e.g. the GP)."""
        if self.amp_dtype is None or not enabled:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


class Method(nn.Module):
    """Base class: ``networks`` (an nn.ModuleDict), optimisers/schedulers by network name, a step.

    Subclasses set ``self.networks`` and ``self.optimizers``/``self.schedulers`` (dicts keyed by the
    network name), implement :meth:`train_step` and :meth:`predict`. ``wrap`` lets the engine
    replace networks by DDP-wrapped versions without the method knowing.
    """

    #: the network used at inference time
    generator_name = "G"

    def __init__(self) -> None:
        super().__init__()
        self.networks = nn.ModuleDict()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.runtime = Runtime()
        self._wrapped: dict[str, nn.Module] = {}

    def net(self, name: str) -> nn.Module:
        """The (possibly DDP-wrapped) network to call in the step."""
        return self._wrapped.get(name, self.networks[name])

    def wrap(self, fn: Callable[[str, nn.Module], nn.Module]) -> None:
        for name, module in self.networks.items():
            if any(p.requires_grad for p in module.parameters()):
                self._wrapped[name] = fn(name, module)

    def before_training(self) -> None:
        """Load what training needs and prediction does not (e.g. MedGAN's pre-trained VGG-19).

        Called by the engine after :meth:`MethodSpec.build` and ``to(device)``, **before** the run
        folder is written, so that a bad weights file fails the run without leaving a folder behind.
        """

    def train_step(self, next_batch: Callable[[], Batch], step: int) -> dict[str, float | torch.Tensor]:
        """One update of every network; returns named scalars (``{"d1/wgan": ..., "g/l1": ...}``)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Source patches (B, C_in, H, W) in network range → target (B, 1, H, W) in network range."""
        return self.networks[self.generator_name](x)

    def confidence(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor | None:
        """Optional per-pixel map in [0, 1] (e.g. Nie et al.'s local confidence M), or None."""
        return None

    def epoch_end(self, epoch: int) -> None:
        """Called by the engine after each epoch: steps the learning-rate schedules."""
        for s in self.schedulers.values():
            s.step()


@dataclass
class MethodSpec:
    """A registered method variant: name, one-line summary, paper, config class and defaults."""

    name: str
    summary: str
    paper: str
    config_cls: type
    method_cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    sample_kind: str = "2.5d"  # how the engine samples: "2.5d" (k slices → 1), "2d" (k = 1)
    #: optional ``fn(cfg, data: PreparedData, seed) -> sampler`` replacing the default patch sampler;
    #: a sampler has ``batch(n) -> dict[str, Tensor]``, ``state_dict()`` and ``load_state_dict()``
    make_sampler: Callable[..., Any] | None = None
    #: False for methods that are not source → target translators (no full-volume validation)
    predicts_volumes: bool = True
    #: optional ``fn(cfg, out, *, resume, allow_config_change, console, ...) -> TrainResult`` for methods that
    #: train several stages into one run folder (Qu et al.); ``launch_train`` calls it instead of one Trainer
    pipeline: Callable[..., Any] | None = None

    def make_params(self, params: dict[str, Any] | None = None) -> Any:
        """Typed params: the spec's defaults overridden by the user's ``params``."""
        merged = {**self.defaults, **(params or {})}
        return from_dict(self.config_cls, merged, prefix="params")

    def resolved(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return to_dict(self.make_params(params))

    def build(self, params: Any, *, in_channels: int, out_channels: int, patch_size: tuple[int, int]) -> Method:
        return self.method_cls(params, in_channels=in_channels, out_channels=out_channels, patch_size=patch_size)


METHODS: Registry[MethodSpec] = Registry("method")


def register(spec: MethodSpec) -> MethodSpec:
    METHODS.add(spec.name, spec)
    return spec


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``modules`` (the discriminators during G's step)."""
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    try:
        yield
    finally:
        for m, fl in zip(modules, flags):
            for p, f in zip(m.parameters(), fl):
                p.requires_grad_(f)
