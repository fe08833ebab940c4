"""The machine's own peak, measured in the same run, and FLOP counting — for the benchmarks.

Efficiency figures ("achieved GFLOP/s against the peak") are only meaningful against a peak
measured on the same machine, with the same threads, at the same time (a shared machine's load
changes both alike). Used by ``benchmarks/inference.py``; ``train_step.py`` and
``medgan_step.py`` can use the same helpers.

* :func:`measure_peak`: best-of-N GFLOP/s of a large fp32 matmul and of a large 3×3 convolution
  (channels-last, the layout oneDNN is fastest on) on CPU; on CUDA the same in bf16 (tensor-core
  peak, the denominator of MFU).
* :func:`count_flops`: FLOPs of one call, by ``torch.utils.flop_counter.FlopCounterMode``
  (a multiply-add counts as 2 FLOPs, convolutions and matmuls only — element-wise ops are
  not counted, as usual for MFU).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn: Callable[[], Any], flops: float, device: torch.device, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` GFLOP/s of ``fn`` (one warm-up call first): ``(per wall second,
    per CPU second of this process)``. The second divides by the CPU time the process's threads
    actually got (``time.process_time``), so on a shared machine it does not depend on how
    many other processes compete for the cores (a thread waiting for a core is not counted;
    one spinning at a barrier is)."""
    fn()
    _sync(device)
    best = best_cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return flops / best / 1e9, flops / max(best_cpu, 1e-9) / 1e9


def measure_peak(device: str | torch.device = "cpu", *, repeats: int = 5, size: int = 2048,
                 conv_channels: int = 128, conv_hw: int = 72, conv_batch: int = 8) -> dict[str, Any]:
    """Measured peak GFLOP/s of this machine: ``{"matmul": …, "conv": …, "conv_cpu": …, "dtype": …}``.

    ``conv_cpu``: the convolution's GFLOP per CPU-second of this process (the process's CPU
    time summed over its threads, so for T threads it is 1/T of a wall-clock rate on T free
    cores); compare it with a workload's FLOPs / CPU seconds.

    CPU: fp32 ``size``² matmul and a ``conv_channels`` → ``conv_channels`` 3×3 convolution on
    ``(conv_batch, C, conv_hw, conv_hw)`` channels-last (the shape of a UNet25D level).
    CUDA: the same in bf16, larger (tensor cores need large problems to reach their peak).
    """
    device = torch.device(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        size, conv_batch = max(size, 8192), max(conv_batch, 64)
    with torch.inference_mode():
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        matmul, _ = _best_rate(lambda: a @ b, 2.0 * size**3, device, repeats)
        conv = torch.nn.Conv2d(conv_channels, conv_channels, 3, padding=1, bias=False).to(device, dtype).eval()
        x = torch.randn(conv_batch, conv_channels, conv_hw, conv_hw, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        conv = conv.to(memory_format=torch.channels_last)
        conv_flops = 2.0 * conv_batch * conv_channels * conv_channels * 9 * conv_hw * conv_hw
        conv_rate, conv_cpu = _best_rate(lambda: conv(x), conv_flops, device, repeats)
    return {"matmul": matmul, "conv": conv_rate, "conv_cpu": conv_cpu, "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "device": str(device)}


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def describe_peak(peak: dict[str, Any]) -> str:
    return (f"measured peak ({peak['dtype']}, {peak['threads']} threads, {peak['device']}): "
            f"matmul {peak['matmul']:.1f} GFLOP/s, 3×3 conv {peak['conv']:.1f} GFLOP/s "
            f"({peak['conv_cpu']:.1f} GFLOP per CPU-second)")
