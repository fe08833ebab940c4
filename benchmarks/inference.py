"""Full-volume 2.5D inference: medsyn's sliding window vs MONAI vs a one-patch-at-a-time loop.

Same network, same windows (144² at 50 % overlap by default, Gaussian blending), same volume.
Each method runs in its own subprocess so that its peak memory (``ru_maxrss``) is its own.

    python benchmarks/inference.py              # 240×240×155 volume, 1 modality, k = 5, batch 16
    python benchmarks/inference.py --quick      # 96×96×24, 64² windows: seconds
    python benchmarks/inference.py --volume /work/shared/data/brats2023/BraTS-GLI-00000-000/t1n.nii.gz \
        --base 64 --slices 40 56 --methods medsyn monai-box monai
    python benchmarks/inference.py --device cuda --amp

Methods:

* ``medsyn``: :func:`medsyn.inference.sliding_window.predict_volume_25d` as ``medsyn predict``
  runs it: foreground-aware (``--region``, default ``foreground``: windows tile the source
  foreground's in-plane box, windows and slices without foreground are skipped), BatchNorm
  folded into the convolutions (``--no-fold`` turns that off), channels-last batches on the CPU
  (``--medsyn-layout nchw`` turns that off), optionally ``--compile``.
* ``medsyn-grid``: ``medsyn`` with ``region=foreground-grid`` (whatever ``--region`` says): the
  full field of view's tiling, windows and slices without foreground skipped; inside the mask
  the same computation as ``monai``.
* ``medsyn-full``: the same function over the whole field of view (``region=full``), no folding:
  medsyn before foreground-aware inference.
* ``monai``: what a MONAI user writes for 2.5D: build the ``(Z, M·k, X, Y)`` stack tensor of the
  whole volume (replicated first/last slices) and call ``monai.inferers.sliding_window_inference``
  with the 2D ROI and ``sw_batch_size`` = our batch size.
* ``monai-box``: the same after cropping to the foreground, as a MONAI user who crops first
  would: the stacks of the slices that hold foreground, cropped in-plane to the same box as
  medsyn's (:func:`~medsyn.inference.sliding_window.foreground_box`). Inside the mask its output
  is the same computation as ``medsyn``'s, so the masked outputs must agree to float rounding.
* ``loop``: per slice, per window: cut the 2.5D patch with numpy, ``model(patch[None])`` under
  ``torch.no_grad``, accumulate weighted predictions. Same window positions and weights.

The foreground mask: with ``--volume``, medsyn's own (``medsyn.data.masks.compute_mask``, what
``medsyn predict`` uses); for a random volume, a centred ellipsoid (``--mask none``: no mask).
FLOPs: ``torch.utils.flop_counter`` on one window × windows computed; the achieved GFLOP/s is
printed next to this machine's peak measured in the same run (``benchmarks/_peak.py``: a large
fp32 matmul and 3×3 convolution on CPU, bf16 on CUDA → MFU), before and after the methods.

Prints times, ratios, GFLOP/s and peak memory, and checks that the outputs agree (inside the mask
where a method only computes the foreground). This is a script, not a test: it never runs
under pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("medsyn", "medsyn-grid", "medsyn-full", "monai", "monai-box", "loop")
#: methods whose output is defined only inside the mask (background outside)
MASKED = ("medsyn", "medsyn-grid", "monai-box")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=3, default=(240, 240, 155), metavar=("X", "Y", "Z"),
                   help="volume size (canonical orientation, axial slices along Z); default BraTS 240 240 155")
    p.add_argument("--volume", type=Path, help="a NIfTI file to use instead of a random volume (scaled to [-1, 1])")
    p.add_argument("--modalities", type=int, default=1, help="source modalities M (model input = M·k channels)")
    p.add_argument("--context", type=int, default=5, help="k adjacent slices per stack (odd)")
    p.add_argument("--patch", type=int, nargs=2, default=(144, 144), metavar=("PH", "PW"))
    p.add_argument("--overlap", type=float, default=0.5)
    p.add_argument("--blend", choices=("gaussian", "uniform"), default="gaussian")
    p.add_argument("--batch", type=int, default=16, help="windows per model call (medsyn and MONAI)")
    p.add_argument("--base", type=int, default=32, help="UNet25D width")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="torch.autocast: bfloat16 on CPU (native bf16 only) and CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of all methods, interleaved (A B C A B C …); each method's fastest run is reported")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=["medsyn", "monai-box", "monai"])
    p.add_argument("--medsyn-layout", choices=("auto", "nchw"), default="auto",
                   help="medsyn's batches: auto (channels-last on CPU, medsyn's default) or plain NCHW")
    p.add_argument("--quick", action="store_true", help="small problem: 96×96×24, 64² windows")
    p.add_argument("--slices", type=int, nargs=2, metavar=("FIRST", "STOP"),
                   help="only axial slices FIRST … STOP-1 of the volume (a reduced problem; say so when reporting)")
    p.add_argument("--mask", choices=("auto", "none"), default="auto",
                   help="foreground mask: auto (medsyn's computed mask of --volume, else a centred ellipsoid) or none")
    p.add_argument("--region", choices=("foreground", "foreground-grid", "full"), default="foreground",
                   help="medsyn's inference.region (default foreground)")
    p.add_argument("--no-fold", action="store_true", help="medsyn: do not fold BatchNorm into the convolutions")
    p.add_argument("--compile", action="store_true", help="medsyn: torch.compile (inductor); compile time reported apart")
    p.add_argument("--allocator", choices=("medsyn", "default", "tuned"), default="medsyn",
                   help="host malloc: medsyn (medsyn's rows keep freed memory, as `medsyn predict` does; MONAI "
                        "and the loop as glibc comes), default (glibc as it comes for every row; medsyn rows "
                        "get MEDSYN_MALLOC=default) or tuned (every row keeps freed memory)")
    p.add_argument("--peak-repeats", type=int, default=5, help="best-of-N for the peak matmul/conv")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="keep each method's output (METHOD.npy) and timings (METHOD.json) in DIR, e.g. to compare "
                        "with a method timed in another run")
    p.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.shape, args.patch = (96, 96, 24), (64, 64)
    if args.context < 1 or args.context % 2 == 0:
        p.error(f"--context must be a positive odd number, got {args.context}")
    if args.volume is None and any(s < q for s, q in zip(args.shape[:2], args.patch)):
        p.error(f"--shape {args.shape} must be at least --patch {args.patch} in-plane (the loop does not pad)")
    return args


# ----------------------------------------------------------------------------------- worker


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def load_volume(args) -> np.ndarray:
    """``(M, X, Y, Z)`` float32 in [-1, 1] (``--slices`` applied)."""
    return load_volume_and_mask(args)[0]


def load_volume_and_mask(args) -> tuple[np.ndarray, np.ndarray | None]:
    """The volume ``(M, X, Y, Z)`` in [-1, 1] and its foreground mask ``(X, Y, Z)`` (or None),
    both restricted to ``--slices``. The mask is computed on the whole volume first."""
    if args.volume is not None:
        import nibabel as nib

        from medsyn.data.masks import compute_mask

        data = np.asarray(nib.as_closest_canonical(nib.load(args.volume)).dataobj, dtype=np.float32)
        mask = compute_mask(data) if args.mask == "auto" else None
        lo, hi = float(data.min()), float(data.max())
        data = 2 * (data - lo) / max(hi - lo, 1e-6) - 1
        volume = np.repeat(data[None], args.modalities, axis=0)
    else:
        rng = np.random.default_rng(0)
        volume = rng.uniform(-1, 1, size=(args.modalities, *args.shape)).astype(np.float32)
        grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in args.shape), indexing="ij")
        ellipsoid = (grid[0] / 0.5) ** 2 + (grid[1] / 0.6) ** 2 + (grid[2] / 0.8) ** 2 <= 1
        mask = ellipsoid if args.mask == "auto" else None
    if args.slices:
        first, stop = args.slices
        volume = volume[..., first:stop]
        mask = None if mask is None else mask[..., first:stop]
    return np.ascontiguousarray(volume), mask


def build_model(args, device):
    import torch

    torch.manual_seed(0)
    in_channels = args.modalities * args.context
    try:
        from medsyn.models.generators.unet25d import UNet25D

        model, name = UNet25D(in_channels=in_channels, out_channels=1, base=args.base), "medsyn UNet25D"
    except ImportError:  # stand-in while the real generator is not importable
        model, name = _StandInUNet(in_channels, 1, args.base), "stand-in UNet"
    return model.to(device).eval(), name


def _stand_in_block(c_in, c_out):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def _StandInUNet(in_channels, out_channels, base):  # noqa: N802 - reads like a class
    import torch
    from torch import nn

    class StandIn(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [base, base * 2, base * 4]
            self.down = nn.ModuleList()
            c = in_channels
            for w in widths:
                self.down.append(_stand_in_block(c, w))
                c = w
            self.bottleneck = _stand_in_block(c, c * 2)
            self.up = nn.ModuleList()
            self.dec = nn.ModuleList()
            c *= 2
            for w in reversed(widths):
                self.up.append(nn.ConvTranspose2d(c, w, 2, stride=2))
                self.dec.append(_stand_in_block(2 * w, w))
                c = w
            self.head = nn.Conv2d(c, out_channels, 1)

        def forward(self, x):
            skips = []
            for block in self.down:
                x = block(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], 1))
            return torch.tanh(self.head(x))

    return StandIn()


def run_medsyn(model, volume, args, device, amp_dtype, mask=None, stats=None):
    """``predict_volume_25d``; with ``mask``, foreground-aware as ``--region`` says."""
    from medsyn.inference.sliding_window import predict_volume_25d

    region = args.region if mask is not None else "full"
    total = []
    out = predict_volume_25d(
        model, volume, slice_axis=2, context=args.context, patch_size=tuple(args.patch), overlap=args.overlap,
        blend=args.blend, batch_size=args.batch, device=device, autocast_dtype=amp_dtype,
        channels_last=None if args.medsyn_layout == "auto" else False,
        mask=mask if region != "full" else None, crop_to_mask=region == "foreground",
        progress=lambda done, n: total.append(n),
    )
    if stats is not None:
        stats["windows"] = total[-1]
    return out


def _monai_stacks(volume: np.ndarray, context: int, slices, device):
    """``(len(slices), M·k, X, Y)`` 2.5D stacks (first/last slices replicated), as a MONAI user builds them."""
    import torch

    k, (m, x, y, z) = context, volume.shape
    vol = torch.as_tensor(volume, device=device)
    centre = torch.as_tensor(slices, device=device)
    idx = torch.clamp(centre[:, None] + torch.arange(k, device=device) - k // 2, 0, z - 1)
    return vol[:, :, :, idx].permute(3, 0, 4, 1, 2).reshape(len(slices), m * k, x, y)


def _monai(stack, model, args, device, amp_dtype):
    import contextlib

    import torch
    from monai.inferers import sliding_window_inference

    mode = "gaussian" if args.blend == "gaussian" else "constant"
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        out = sliding_window_inference(stack, tuple(args.patch), args.batch, model, overlap=args.overlap, mode=mode)
    return out.float().permute(1, 2, 3, 0).cpu().numpy()  # (C, X, Y, n_slices)


def run_monai(model, volume, args, device, amp_dtype, mask=None, stats=None):
    """MONAI over the whole field of view (``mask`` unused)."""
    z = volume.shape[-1]
    if stats is not None:
        stats["windows"] = z * _count(volume.shape[1], args.patch[0], args.overlap) * _count(
            volume.shape[2], args.patch[1], args.overlap)
    return _monai(_monai_stacks(volume, args.context, np.arange(z), device), model, args, device, amp_dtype)


def run_monai_box(model, volume, args, device, amp_dtype, mask=None, stats=None):
    """MONAI after cropping to the foreground: slices with foreground, in-plane box (medsyn's)."""
    from medsyn.inference.sliding_window import foreground_box

    if mask is None:
        raise SystemExit("monai-box needs a foreground mask (drop --mask none)")
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    bx, by = foreground_box(mask.any(axis=2), tuple(args.patch))
    stack = _monai_stacks(volume, args.context, slices, device)[:, :, bx, by]
    if stats is not None:
        stats["windows"] = len(slices) * _count(stack.shape[2], args.patch[0], args.overlap) * _count(
            stack.shape[3], args.patch[1], args.overlap)
    pred = _monai(stack, model, args, device, amp_dtype)
    out = np.zeros((pred.shape[0], *volume.shape[1:]), np.float32)
    out[:, bx, by, slices] = pred
    out[:, ~mask] = 0.0  # background outside the mask, as medsyn writes
    return out


def run_loop(model, volume, args, device, amp_dtype, mask=None, stats=None):
    import contextlib

    import torch

    k, (m, x, y, z) = args.context, volume.shape
    ph, pw = args.patch

    def starts(size, p):  # same positions as MONAI / medsyn: last window at the far edge
        step = max(1, int(p * (1 - args.overlap)))
        return [*range(0, size - p, step), size - p]

    def gauss(p):
        t = np.arange(p) - (p - 1) / 2
        return np.exp(-(t**2) / (2 * (p / 8) ** 2))

    weight = np.outer(gauss(ph), gauss(pw)) if args.blend == "gaussian" else np.ones((ph, pw))
    weight = np.maximum(weight, max(weight.min(), 1e-3)).astype(np.float32)
    out = np.zeros((1, x, y, z), np.float32)
    norm = np.zeros((x, y), np.float32)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    windows = [(i, j) for i in starts(x, ph) for j in starts(y, pw)]
    if stats is not None:
        stats["windows"] = z * len(windows)
    for i, j in windows:
        norm[i : i + ph, j : j + pw] += weight
    for s in range(z):
        stack = volume[:, :, :, np.clip(np.arange(s - k // 2, s + k // 2 + 1), 0, z - 1)]  # (M, X, Y, k)
        stack = stack.transpose(0, 3, 1, 2).reshape(m * k, x, y)
        for i, j in windows:
            patch = torch.from_numpy(np.ascontiguousarray(stack[:, i : i + ph, j : j + pw]))[None].to(device)
            with torch.no_grad(), amp:
                pred = model(patch)[0].float().cpu().numpy()
            out[:, i : i + ph, j : j + pw, s] += pred * weight
    return out / norm[None, :, :, None]


RUNS = {"medsyn": run_medsyn, "medsyn-grid": run_medsyn, "medsyn-full": run_medsyn, "monai": run_monai, "monai-box": run_monai_box,
        "loop": run_loop}


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = None
    if args.amp:
        from medsyn.inference.speedups import amp_dtype as choose_amp

        amp_dtype = choose_amp(device, True)
    volume, mask = load_volume_and_mask(args)
    model, model_name = build_model(args, device)
    compile_s = None
    if args.worker in ("medsyn", "medsyn-grid"):  # as `medsyn predict` prepares the generator
        from medsyn.inference.speedups import compile_model, prepare_for_inference

        model = prepare_for_inference(model, fold=not args.no_fold)
        if args.compile:
            model = compile_model(model)
    if args.worker == "medsyn-full":
        args.region = "full"
    if args.worker == "medsyn-grid":
        args.region = "foreground-grid"
    # warm-up: one call with the method's batch shape (oneDNN/cuDNN set-up is not inference time;
    # for --compile this is the compilation, reported apart)
    warm_batch = 1 if args.worker == "loop" else args.batch
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(torch.zeros(warm_batch, model_in(args), *args.patch, device=device))
    if args.compile and args.worker in ("medsyn", "medsyn-grid"):
        compile_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # imports outside the timed region (importing MONAI alone takes seconds)
    import medsyn.inference.sliding_window  # noqa: F401
    if args.worker.startswith("monai"):
        import monai.inferers  # noqa: F401
    if args.allocator == "tuned":  # medsyn's rows get it from predict_volume_25d itself, the others here
        from medsyn.allocator import keep_freed_memory

        keep_freed_memory()
    rss_before = _rss_mb()
    stats: dict = {}
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, c0 = time.perf_counter(), time.process_time()
    out = RUNS[args.worker](model, volume, args, device, amp_dtype, mask=mask, stats=stats)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    np.save(args.out, out)
    result = {
        "method": args.worker,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "sys_seconds": ru1.ru_stime - ru0.ru_stime,
        "minor_faults": ru1.ru_minflt - ru0.ru_minflt,
        "windows": stats["windows"],
        "compile_s": compile_s,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "model": model_name,
        "threads": torch.get_num_threads(),
        "shape": list(volume.shape),
        "mask_voxels": None if mask is None else int(mask.sum()),
    }
    print("RESULT " + json.dumps(result), flush=True)


def model_in(args) -> int:
    return args.modalities * args.context


# ------------------------------------------------------------------------------------- main


def _peak(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from _peak import measure_peak

    return measure_peak(args.device, repeats=args.peak_repeats)


def _flops_per_window(args) -> int:
    """FLOPs of one window through the (unfolded) network: the useful work, same for every method."""
    import torch

    from _peak import count_flops

    model, _ = build_model(args, torch.device("cpu"))
    return count_flops(model, torch.zeros(1, model_in(args), *args.patch))


def _tiling(method: str, args) -> str:
    """Methods with the same tiling compute the same thing inside the mask."""
    if method == "monai-box" or (method == "medsyn" and args.region == "foreground" and args.mask != "none"):
        return "box"
    return "full"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    base_argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    results = {}
    uptime_before = os.getloadavg()
    peaks = [_peak(args)]
    flops = _flops_per_window(args)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() if args.keep is None else _nullcontext(str(args.keep)) as tmp:
        for round_ in range(max(1, args.repeat)):  # interleaved rounds: load changes hit every method alike
            for method in args.methods:
                out = Path(tmp) / f"{method}.npy"
                cmd = [sys.executable, __file__, *base_argv, "--worker", method, "--out", str(out)]
                env = os.environ.copy()
                if args.allocator == "default":
                    env["MEDSYN_MALLOC"] = "default"
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                r = json.loads(line[len("RESULT "):])
                print(f"  round {round_ + 1}: {method:11s} {r['seconds']:.1f} s, {r['windows']} windows, "
                      f"1-min load {os.getloadavg()[0]:.1f}", flush=True)
                if args.keep:
                    r["load_after"] = os.getloadavg()
                    (Path(tmp) / f"{method}.json").write_text(json.dumps(r))
                if method not in results or r["seconds"] < results[method]["seconds"]:
                    results[method] = r
                results[method]["output"] = np.load(out)
    peaks.append(_peak(args))
    uptime_after = os.getloadavg()
    _, mask = load_volume_and_mask(args)

    from _peak import describe_peak

    first = next(iter(results.values()))
    m, x, y, z = first["shape"]
    print()
    print(f"volume (M, X, Y, Z) = {tuple(first['shape'])} ({args.volume or 'random'}"
          f"{f', slices {args.slices[0]}…{args.slices[1] - 1}' if args.slices else ''}), "
          f"mask {'none' if mask is None else f'{int(mask.sum())} voxels ({mask.mean():.1%})'}, k = {args.context}, "
          f"windows {tuple(args.patch)}, overlap {args.overlap}, {args.blend} blending, batch {args.batch}")
    print(f"model: {first['model']} (base {args.base}), {flops / 1e9:.2f} GFLOP per window "
          f"(torch.utils.flop_counter), device {args.device}, amp {args.amp}, torch threads {first['threads']}, "
          f"{os.cpu_count()} CPUs; medsyn: region {args.region}, BN {'not ' if args.no_fold else ''}folded, "
          f"layout {args.medsyn_layout}, compile {args.compile}")
    print(f"load average (1/5/15 min) before {'/'.join(f'{v:.1f}' for v in uptime_before)}, "
          f"after {'/'.join(f'{v:.1f}' for v in uptime_after)}")
    for when, peak in zip(("before", "after"), peaks):
        print(f"{when:6s}: {describe_peak(peak)}")
    if args.slices and mask is not None:
        print(f"on the whole volume (all {_whole_depth(args)} slices, counted, not run): {_whole_volume_windows(args)}")
    conv_peak = max(p["conv"] for p in peaks)
    conv_cpu_peak = max(p["conv_cpu"] for p in peaks)
    print()
    gpu = args.device.startswith("cuda")
    print(f"{'method':11s} {'seconds':>9s} {'windows':>8s} {'ms/window':>10s} {'GFLOP/s':>8s} "
          f"{'% conv peak' if not gpu else 'MFU %':>11s} {'CPU s':>8s} {'% (CPU time)':>12s} "
          f"{'kernel %':>9s} {'faults/window':>14s} "
          f"{'peak RSS MB':>12s} {'+ over setup MB':>16s}" + (f" {'CUDA peak MB':>13s}" if gpu else ""))
    for name, r in results.items():
        rate = flops * r["windows"] / r["seconds"] / 1e9
        cpu_rate = flops * r["windows"] / max(r["cpu_seconds"], 1e-9) / 1e9
        line = (f"{name:11s} {r['seconds']:9.2f} {r['windows']:8d} {1000 * r['seconds'] / r['windows']:10.1f} "
                f"{rate:8.1f} {100 * rate / conv_peak:11.1f} {r['cpu_seconds']:8.1f} "
                f"{100 * cpu_rate / conv_cpu_peak:12.1f} "
                f"{100 * r['sys_seconds'] / max(r['cpu_seconds'], 1e-9):9.1f} {r['minor_faults'] / r['windows']:14.0f} "
                f"{r['peak_rss_mb']:12.0f} "
                f"{r['peak_rss_mb'] - r['rss_before_mb']:16.0f}")
        if r["cuda_peak_mb"] is not None:
            line += f" {r['cuda_peak_mb']:13.0f}"
        print(line)
        if r.get("compile_s") is not None:
            print(f"{'':11s} (+ {r['compile_s']:.1f} s compiling, not included)")
    print()
    for ours in ("medsyn", "medsyn-grid"):
        if ours not in results:
            continue
        t = results[ours]["seconds"]
        for other in results:
            if not other.startswith("medsyn"):
                ratio = results[other]["seconds"] / t
                print(f"{ours} vs {other:11s}: {ratio:5.2f}x {'faster' if ratio >= 1 else 'slower'} "
                      f"({results[other]['seconds']:.1f} s / {t:.1f} s)")
    tol = 5e-2 if args.amp else 1e-4
    ok = True
    names = list(results)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            oa, ob = results[names[a]]["output"], results[names[b]]["output"]
            masked = mask is not None and (names[a] in MASKED or names[b] in MASKED)
            diff = float(np.abs(oa[:, mask] - ob[:, mask]).max() if masked else np.abs(oa - ob).max())
            where = "inside the mask" if masked else "everywhere"
            if _tiling(names[a], args) != _tiling(names[b], args):
                print(f"max |{names[a]} - {names[b]}| {where} = {diff:.2e} (different window placement: "
                      "the network's border effects, not an error)")
                continue
            agree = diff <= tol
            ok &= agree
            print(f"max |{names[a]} - {names[b]}| {where} = {diff:.2e} ({'agree' if agree else 'DISAGREE'}, tol {tol:g})")
    return 0 if ok else 1


def _nullcontext(value):
    import contextlib

    return contextlib.nullcontext(value)


def _whole_depth(args) -> int:
    return args.shape[2] if args.volume is None else int(load_volume_and_mask(_without_slices(args))[0].shape[-1])


def _without_slices(args):
    whole = argparse.Namespace(**vars(args))
    whole.slices = None
    return whole


def _whole_volume_windows(args) -> str:
    """Windows each tiling computes on the whole volume (no model run): what ``--slices`` leaves out."""
    from medsyn.inference.sliding_window import GridSampler, foreground_box

    volume, mask = load_volume_and_mask(_without_slices(args))
    _, x, y, z = volume.shape
    full = z * _count(x, args.patch[0], args.overlap) * _count(y, args.patch[1], args.overlap)
    bx, by = foreground_box(mask.any(axis=2), tuple(args.patch))
    crop = mask[bx, by].transpose(2, 0, 1)  # (Z, a, b)
    sampler = GridSampler(crop.shape, (1, *args.patch), overlap=(0.0, args.overlap, args.overlap))
    box_all = int(mask.any(axis=(0, 1)).sum()) * (sampler.grid_size // z)
    fg = len(sampler.keep_windows_touching(crop))
    return (f"full field of view {full} windows (monai, medsyn-full); box of the foreground slices {box_all} (monai-box); "
            f"medsyn foreground {fg} ({full / fg:.2f}x fewer than the full field of view)")


def _count(size: int, patch: int, overlap: float) -> int:
    if size <= patch:
        return 1
    step = max(1, int(patch * (1 - overlap)))
    return len(range(0, size - patch, step)) + 1


if __name__ == "__main__":
    sys.exit(main())
