"""``medsyn bench``: is the data pipeline or the model the bottleneck on this machine?

::

    medsyn bench [CONFIG | RUN_DIR] [--set key=value ...] [--device auto] [--steps 3] [--json bench.json]

Measures, with the config's own data, sampler, method and sizes (random initial weights; nothing
is trained or written except ``--json``):

1. data: preparing the training data once (read, normalise), then the training sampler's
   throughput in samples/s (what the engine calls for every mini-batch, in the main process);
2. model: one training step of the method on mini-batches already in device memory → samples
   consumed per second (a step may draw several mini-batches: Nie et al. draw one for the
   discriminators and one for the generator);
3. inference: one full volume (the first subject) through medsyn's sliding window.

The verdict compares (1) with (2). The engine draws batches synchronously, so a step costs
data time + model time: the printed share of time spent waiting for data is what a faster
data pipeline (or background loading) could save at most.

The measuring functions here are shared with ``benchmarks/run_all.py`` (the side-by-side runner).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import typer

Batch = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------- machine


def machine_description(device: torch.device | None = None) -> dict[str, Any]:
    """CPU model, cores, torch threads, load, torch version and GPU (if any) — to print with numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    out = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_1min": load,
           "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        idx = device.index if device is not None and device.type == "cuda" and device.index is not None else 0
        out["gpu"] = torch.cuda.get_device_name(idx)
    return out


def describe(m: dict[str, Any]) -> str:
    load = f", 1-min load {m['load_1min']:.1f}" if m.get("load_1min") is not None else ""
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else "; no GPU"
    return (f"{m['cpu']} ({m['cpu_count']} CPUs, torch {m['torch_threads']} threads{load}){gpu}; "
            f"torch {m['torch']}, Python {m['python']}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------- efficiency


def cpu_counters() -> dict[str, float]:
    """This process's user and kernel CPU seconds and minor page faults so far (all threads)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minflt": float(r.ru_minflt)}


def churn_per_step(before: dict[str, float], after: dict[str, float], steps: int) -> dict[str, float]:
    """Minor page faults per step and the kernel's share of CPU time between two :func:`cpu_counters`.

    Freshly mapped memory costs one minor fault per 4 KiB page touched and kernel time to zero it;
    a step that reuses its memory has neither (allocator.py)."""
    user, sys_ = after["user_s"] - before["user_s"], after["sys_s"] - before["sys_s"]
    return {"faults_per_step": (after["minflt"] - before["minflt"]) / steps,
            "kernel_share": sys_ / (user + sys_) if user + sys_ > 0 else 0.0,
            "user_s_per_step": user / steps, "sys_s_per_step": sys_ / steps}


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (forward, backward and double backward
    convolutions and matrix products; ``torch.utils.flop_counter``, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    class _Global:  # count globally: FlopCounterMode's per-module hooks break torch.autograd.grad
        parents = {"Global"}  # on a leaf (the gradient penalty) in torch 2.13

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

    fc = FlopCounterMode(display=False)
    fc.mod_tracker = _Global()
    with fc:
        fn()
    return int(fc.get_total_flops())


def measure_peak(device: torch.device, *, repeat: int = 5) -> dict[str, Any]:
    """The machine's own attainable rate, measured now (same threads, same load as the run).

    CPU: float32 — a 2048² matrix product and a large 3×3 convolution (batch 8, 128 → 128
    channels, 72² pixels: a mid-level layer of the paper's UNet). CUDA: bfloat16 on the tensor
    cores — an 8192² product and the same convolution at batch 64, channels-last. Best of
    ``repeat`` (the fastest run is the closest to the limit). GFLOP/s, 2 FLOPs per multiply-add.
    """
    import torch.nn.functional as F

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    n = 8192 if cuda else 2048
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    batch = 64 if cuda else 8
    x = torch.randn(batch, 128, 72, 72, device=device, dtype=dtype, generator=g)
    w = torch.randn(128, 128, 3, 3, device=device, dtype=dtype, generator=g)
    if cuda:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)

    def best(fn: Callable[[], Any], flops: float) -> float:
        fn()  # warm-up: kernels, allocator
        _sync(device)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        return flops / min(times) / 1e9

    with torch.no_grad():
        mm = best(lambda: a @ b, 2.0 * n**3)
        conv = best(lambda: F.conv2d(x, w, padding=1), 2.0 * batch * 128 * 128 * 9 * 72 * 72)
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "matmul_gflops": mm, "conv_gflops": conv,
            "matmul": f"{n}x{n} @ {n}x{n}", "conv": f"3x3 conv, {batch}x128x72x72 -> 128 channels"}


def profile_steps(step: Callable[[], Any], device: torch.device, *, steps: int, warmup: int = 1) -> dict[str, Any]:
    """Warm up, then time ``steps`` calls of ``step`` (one training step each) on ``device``.

    The first warm-up call is FLOP-counted; the timed calls give seconds, page faults and the
    kernel's share (:func:`churn_per_step`); then the peak is measured in this process
    (:func:`measure_peak`). ``"first"`` is what the first call returned."""
    import resource

    first: list[Any] = []
    flops = count_flops(lambda: first.append(step()))
    for _ in range(warmup - 1):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    c0 = cpu_counters()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    out = {"seconds": times, "flops_per_step": flops, **churn_per_step(c0, cpu_counters(), steps),
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "first": first[0]}
    if device.type == "cuda":
        out["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["gpu"] = torch.cuda.get_device_name(device)
    out["peak"] = measure_peak(device)
    return out


#: the efficiency columns of a step benchmark's table (see :func:`efficiency_cells`)
EFFICIENCY_HEADER = ("s / step | GFLOP / step | GFLOP/s | peak {ref} GFLOP/s | % of peak | faults / step | "
                     "kernel % of CPU | {mem} GB")


def efficiency_cells(row: dict[str, Any], *, cuda: bool) -> str:
    """One :func:`profile_steps` result as Markdown table cells under :data:`EFFICIENCY_HEADER`:
    median s/step, GFLOP/step, achieved GFLOP/s, the peak (CUDA: bf16 matmul → MFU; CPU: float32
    conv), the share of it, faults/step, kernel share, peak memory."""
    import statistics

    sec = statistics.median(row["seconds"])
    rate = row["flops_per_step"] / sec / 1e9
    peak = row["peak"]["matmul_gflops" if cuda else "conv_gflops"]
    mem = row["cuda_peak_gb" if cuda else "peak_rss_gb"]
    return (f"{sec:.2f} | {row['flops_per_step'] / 1e9:.0f} | {rate:.1f} | {peak:.1f} | {100 * rate / peak:.0f} % | "
            f"{row['faults_per_step']:,.0f} | {100 * row['kernel_share']:.1f} % | {mem:.2f}")


def run_worker(cmd: list[str], *, allocator: str) -> dict[str, Any] | None:
    """Run one benchmark row in a fresh process (its own memory, faults and allocator) and return
    the JSON it prints after ``RESULT ``; ``allocator`` ``"default"`` sets ``MEDSYN_MALLOC=default``
    (glibc as it comes), ``"tuned"`` medsyn's setting. None (output shown) if the worker failed."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MEDSYN_MALLOC", None)
    if allocator == "default":
        env["MEDSYN_MALLOC"] = "default"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
        return None
    return json.loads(line[len("RESULT "):])


# -------------------------------------------------------------------------------------- data


def make_sampler(cfg, data, seed: int = 0):
    """The training sampler the engine would build for ``cfg`` on prepared ``data``."""
    from medsyn.data.sampling import PatchSampler25D
    from medsyn.methods import METHODS

    spec = METHODS.get(cfg.method, key="method")
    if spec.make_sampler is not None:
        return spec.make_sampler(cfg, data, seed)
    d = cfg.data
    k = d.context_slices if spec.sample_kind == "2.5d" else 1
    return PatchSampler25D(data.train, slice_axis=d.slice_axis, context=k, patch_size=tuple(d.patch_size),
                           foreground_fraction=d.foreground_fraction, label_fraction=d.label_fraction,
                           augment=d.augment, flip=d.flip, seed=seed)


def measure_data(cfg, *, batches: int = 20, seconds: float = 5.0) -> dict[str, Any]:
    """Prepare the training data once, then time ``sampler.batch(train.batch_size)``.

    Returns setup seconds, seconds per batch, samples/s, and the prepared data + sampler (for
    reuse: ``"_data"``, ``"_sampler"``; not JSON).
    """
    from medsyn.data.pipeline import prepare_training_data

    t0 = time.perf_counter()
    data = prepare_training_data(cfg.data)
    setup = time.perf_counter() - t0
    sampler = make_sampler(cfg, data, cfg.train.seed)
    bs = cfg.train.batch_size
    sampler.batch(bs)  # first call: lazy set-up of the cases
    n = 0
    t0 = time.perf_counter()
    while n < batches and (n < 2 or time.perf_counter() - t0 < seconds):
        sampler.batch(bs)
        n += 1
    dt = (time.perf_counter() - t0) / n
    return {"setup_s": setup, "batch_size": bs, "batches": n, "s_per_batch": dt, "samples_per_s": bs / dt,
            "train_subjects": len(data.train), "_data": data, "_sampler": sampler}


# ------------------------------------------------------------------------------------- model


def build_method(cfg, device: torch.device, amp: bool):
    """The method of ``cfg`` as the engine builds it (random weights), on ``device``."""
    from medsyn.config import method_params
    from medsyn.methods import METHODS, Runtime

    spec = METHODS.get(cfg.method, key="method")
    k = cfg.data.context_slices if spec.sample_kind == "2.5d" else 1
    m = spec.build(method_params(cfg), in_channels=len(cfg.data.source) * k, out_channels=1,
                   patch_size=tuple(cfg.data.patch_size))
    m.to(device)
    m.runtime = Runtime(device, torch.bfloat16 if amp and device.type == "cuda" else None)
    m.train()
    return m


def cycle(batches: list[Batch]) -> tuple[Callable[[], Batch], dict[str, int]]:
    """``next_batch`` over pre-made batches, counting the calls."""
    state = {"calls": 0}

    def next_batch() -> Batch:
        b = batches[state["calls"] % len(batches)]
        state["calls"] += 1
        return b

    return next_batch, state


def time_train_steps(method, batches: list[Batch], device: torch.device, *, steps: int, warmup: int = 1) -> dict[str, Any]:
    """Seconds per ``method.train_step`` on ``batches`` already on ``device``; samples drawn per step."""
    next_batch, state = cycle(batches)
    for i in range(warmup):
        method.train_step(next_batch, i + 1)
    _sync(device)
    state["calls"] = 0
    t0 = time.perf_counter()
    for i in range(steps):
        method.train_step(next_batch, warmup + i + 1)
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    bs = int(next(iter(batches[0].values())).shape[0])
    per_step = state["calls"] / steps * bs
    return {"s_per_step": dt, "samples_per_step": per_step, "samples_per_s": per_step / dt, "steps": steps}


def measure_model(cfg, sampler, device: torch.device, *, amp: bool, steps: int = 3, warmup: int = 1) -> dict[str, Any]:
    method = build_method(cfg, device, amp)
    batches = [{k: v.to(device) for k, v in sampler.batch(cfg.train.batch_size).items()} for _ in range(4)]
    out = time_train_steps(method, batches, device, steps=steps, warmup=warmup)
    out["_method"] = method
    return out


def measure_inference(cfg, method, data, device: torch.device) -> dict[str, Any] | None:
    """One volume (the first training subject, cropped as cached) through the sliding window, in network range."""
    from medsyn.inference.predict import predict_case_arrays
    from medsyn.methods import METHODS

    spec = METHODS.get(cfg.method, key="method")
    if not data.train or not spec.predicts_volumes:
        return None
    source = data.train[0].canonical_source()  # the cached (cropped) volume
    k = cfg.data.context_slices if spec.sample_kind == "2.5d" else 1
    t0 = time.perf_counter()
    predict_case_arrays(method, source, cfg, device, context=k)
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "shape": list(source.shape)}


def verdict(data_sps: float, model_sps: float) -> tuple[str, float]:
    """Which side limits training, and the share of a step spent drawing data (synchronous loading)."""
    t_data, t_model = 1.0 / data_sps, 1.0 / model_sps
    share = t_data / (t_data + t_model)
    if data_sps < model_sps:
        text = (f"the DATA PIPELINE is the bottleneck: it delivers {data_sps:.1f} samples/s, the model could consume "
                f"{model_sps:.1f} samples/s ({model_sps / data_sps:.1f}x more); {100 * share:.2g} % of each step waits for data")
    else:
        text = (f"the MODEL is the bottleneck: the data pipeline delivers {data_sps:.1f} samples/s, "
                f"{data_sps / model_sps:.1f}x what the model consumes ({model_sps:.1f} samples/s); "
                f"{100 * share:.2g} % of each step is spent drawing data")
    return text, share


def run_bench(cfg, *, device: torch.device, amp: bool, steps: int = 3, batches: int = 20,
              inference: bool = True, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The short benchmark: data, train step, (inference); returns a JSON-ready dict."""
    from medsyn.allocator import keep_freed_memory

    keep_freed_memory()  # as the Trainer does: time the step the engine runs
    machine = machine_description(device)
    say(f"machine: {describe(machine)}")
    say(f"config: method {cfg.method}, batch {cfg.train.batch_size}, patch {list(cfg.data.patch_size)}, "
        f"device {device}, AMP {'bf16' if amp and device.type == 'cuda' else 'off'}")
    say("timing the data pipeline …")
    d = measure_data(cfg, batches=batches)
    say(f"data:      prepare {d['setup_s']:.2f} s ({d['train_subjects']} training subjects); "
        f"sampler {d['samples_per_s']:.1f} samples/s ({1000 * d['s_per_batch']:.1f} ms per batch of {d['batch_size']})")
    say(f"timing {steps} training step(s) after one warm-up step …")
    m = measure_model(cfg, d["_sampler"], device, amp=amp, steps=steps)
    say(f"model:     {m['s_per_step']:.3f} s per training step, {m['samples_per_step']:.0f} samples per step "
        f"→ {m['samples_per_s']:.1f} samples/s")
    inf = None
    if inference:
        inf = measure_inference(cfg, m["_method"], d["_data"], device)
        if inf:
            say(f"inference: {inf['seconds']:.2f} s for one volume {tuple(inf['shape'][1:])} (sliding window, "
                f"overlap {cfg.inference.overlap}, batch {cfg.inference.batch_size})")
    text, share = verdict(d["samples_per_s"], m["samples_per_s"])
    say(f"verdict:   {text}")
    clean = lambda x: {k: v for k, v in x.items() if not k.startswith("_")}  # noqa: E731
    return {"machine": machine, "method": cfg.method, "device": str(device), "amp": bool(amp and device.type == "cuda"),
            "data": clean(d), "model": clean(m), "inference": inf, "data_wait_share": share,
            "bottleneck": "data" if d["samples_per_s"] < m["samples_per_s"] else "model", "verdict": text}


# --------------------------------------------------------------------------------------- CLI


def register(app: typer.Typer) -> None:
    app.command(name="bench")(bench)


def bench(
    config: Optional[Path] = typer.Argument(None, help="YAML config or a run folder (default: the built-in Nie et al. config on the bundled sample)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set train.batch_size=4 (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast on CUDA (default: the config's train.amp)."),
    steps: int = typer.Option(3, "--steps", min=1, help="Timed training steps (after one warm-up step)."),
    batches: int = typer.Option(20, "--batches", min=1, help="Timed sampler batches (at most 5 s)."),
    inference: bool = typer.Option(True, "--inference/--no-inference", help="Also time one full-volume prediction."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the measurements here as JSON."),
) -> None:
    """Short benchmark on this machine: data-pipeline throughput vs the model's consumption (which is the bottleneck?)."""
    from medsyn.cli.main import console
    from medsyn.config import load_config
    from medsyn.io.image import atomic_write_bytes
    from medsyn.training.engine import resolve_device

    path = config
    if config is not None and config.is_dir():
        path = config / "config.yaml"
    cfg = load_config(path, list(set_))
    dev = resolve_device(device if device != "auto" else cfg.train.device)
    use_amp = cfg.train.amp if amp is None else amp
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    res = run_bench(cfg, device=dev, amp=use_amp, steps=steps, batches=batches, inference=inference,
                    say=lambda s: console.print(s, highlight=False, soft_wrap=True))
    res["config"] = str(path) if path else "defaults"
    if json_out is not None:
        atomic_write_bytes(json_out, json.dumps(res, indent=1, default=str).encode())
        console.print(f"wrote {json_out}")


__all__ = ["bench", "register", "run_bench", "measure_data", "measure_model", "time_train_steps", "build_method",
           "machine_description", "describe", "verdict", "cycle"]
