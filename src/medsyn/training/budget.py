"""Will the run fit? Patch size against the data and a memory estimate, checked before training.

A patch more than twice as large as every training slice (along a side) is mostly padding, and
its memory grows with its area:
``data.patch_size=[512, 512]`` on a 72×89 image once took 23.7 GB for one step. Both are refused
before the first step (and before the run folder is written), with the numbers.

The memory estimate (a choice; docs/training.md): run the generator once, without gradients, on
one source patch at a small probe size and count every leaf module's output elements; scale that
to the configured patch area and batch. A training step keeps those activations for the backward
pass, holds their gradients while it runs, and the critics see the generator's output, so the
step is taken as ``3 ×`` that, plus weights, gradients and two Adam moments (``4 ×`` parameters).
Convolutional activations grow with the pixel count, so the scaling is close for the fully
convolutional networks here; the estimate is an order of magnitude, and the check only refuses a
step estimated above 90 % of the memory available now.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medsyn.data.sampling import AXES
from medsyn.errors import ConfigError

#: activations kept for backward + their gradients + the critics' pass (see the module docstring)
ACTIVATION_FACTOR = 3
#: weights + gradients + Adam's two moments
PARAMETER_FACTOR = 4
#: refuse above this share of the available memory
MAX_SHARE = 0.9
PROBE_SIDE = 64
#: a patch side may exceed the slice side by this factor at most (padding up to the stride)
MAX_PATCH_TO_SLICE = 2


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_patch_fits_data(cases: list[Any], patch_size: list[int], slice_axis: str) -> None:
    """ConfigError when a patch side is more than ``MAX_PATCH_TO_SLICE`` × that side of every
    training slice (a little padding is normal: patch sides are multiples of the network's stride).

    cases: :class:`~medsyn.data.sampling.NormalizedCase` (mask (X, Y, Z) on the canonical grid) or
    :class:`~medsyn.data.cache.CachedCase` (its cropped shape in X, Y, Z: what patches are cut from).
    """
    if not cases:
        return
    axes = [a for a in range(3) if a != AXES[slice_axis]]
    largest = [max(getattr(c, "canonical_shape", c.mask.shape)[a] for c in cases) for a in axes]
    if any(p > MAX_PATCH_TO_SLICE * s for p, s in zip(patch_size, largest)):
        raise ConfigError(
            f"config key 'data.patch_size': {patch_size[0]}×{patch_size[1]} is more than {MAX_PATCH_TO_SLICE}× the "
            f"largest {slice_axis} slice of the {len(cases)} training subject(s), {largest[0]}×{largest[1]} voxels; "
            f"a patch would be mostly padding. Choose about [{largest[0]}, {largest[1]}] or less (multiples of the "
            "network's stride)")


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` now: CUDA free memory, else the system's MemAvailable (Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _activation_elements_per_pixel(generator: torch.nn.Module, in_channels: int, patch: tuple[int, int],
                                   device: torch.device) -> float | None:
    """Leaf-module output elements per input pixel for one sample; None when the probe fails."""
    k = 1
    while max(patch) // (2 * k) >= PROBE_SIDE and all(p % (2 * k) == 0 for p in patch):
        k *= 2
    probe = (patch[0] // k, patch[1] // k)
    count = [0]

    def hook(_m, _inp, out) -> None:
        if isinstance(out, torch.Tensor):
            count[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in generator.modules() if not list(m.children())]
    was_training = generator.training
    try:
        generator.eval()
        with torch.no_grad():
            generator(torch.zeros(1, in_channels, *probe, device=device))
    except (RuntimeError, ValueError, TypeError):  # a generator with other inputs: no estimate
        return None
    finally:
        generator.train(was_training)
        for h in handles:
            h.remove()
    return count[0] / (probe[0] * probe[1])


def estimate_step_bytes(method: Any, in_channels: int, patch: tuple[int, int], batch: int,
                        device: torch.device) -> tuple[int, int] | None:
    """(estimated bytes of one training step, of which activations) or None (see module docstring)."""
    name = getattr(method, "generator_name", "G")
    if name not in method.networks:
        return None
    gen = method.networks[name]
    per_pixel = _activation_elements_per_pixel(gen, in_channels, patch, device)
    if per_pixel is None:
        return None
    activations = int(ACTIVATION_FACTOR * per_pixel * patch[0] * patch[1] * batch * 4)
    params = sum(p.numel() for p in method.parameters()) * 4 * PARAMETER_FACTOR
    return activations + params, activations


def check_step_memory(method: Any, in_channels: int, patch: tuple[int, int], batch: int, device: torch.device,
                      available: int | None = None) -> None:
    """ConfigError with the numbers when one step is estimated above 90 % of the free memory."""
    est = estimate_step_bytes(method, in_channels, patch, batch, device)
    free = available if available is not None else available_bytes(device)
    if est is None or free is None:
        return
    need, acts = est
    if need > MAX_SHARE * free:
        fit = math.floor(batch * (MAX_SHARE * free - (need - acts)) / max(acts, 1))
        advice = (f"lower train.batch_size (about {fit} would fit) or data.patch_size" if 1 <= fit < batch
                  else "lower data.patch_size")
        raise ConfigError(
            f"config keys 'data.patch_size' / 'train.batch_size': one training step needs about {gib(need)} "
            f"(batch {batch} × {patch[0]}×{patch[1]} patches; activations {gib(acts)}), but the {device.type} has "
            f"{gib(free)} free; {advice}")


def check_patches_fit(cfg: Any, spec: Any, cases: list[Any]) -> None:
    """The patch-size check for the engine's default patch sampler (methods with their own sampler
    choose their own input size)."""
    if spec.make_sampler is None:
        check_patch_fits_data(cases, list(cfg.data.patch_size), cfg.data.slice_axis)


def check_step_fits(cfg: Any, spec: Any, method: Any, in_channels: int, device: torch.device) -> None:
    """The memory check for the engine's default patch sampler."""
    if spec.make_sampler is None:
        check_step_memory(method, in_channels, tuple(cfg.data.patch_size), cfg.train.batch_size, device)


__all__ = ["check_patch_fits_data", "check_patches_fit", "check_step_fits", "check_step_memory", "estimate_step_bytes"]
