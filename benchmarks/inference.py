"""Full-volume 2.5D inference: medsyn's sliding window vs MONAI vs a one-patch-at-a-time loop.

Same network, same windows (144² at 50 % overlap by default, Gaussian blending), same volume.
Each method runs in its own subprocess so that its peak memory (``ru_maxrss``) is its own.

    python benchmarks/inference.py              # 240×240×155 volume, 1 modality, k = 5, batch 16
    python benchmarks/inference.py --quick      # 96×96×24, 64² windows: seconds
    python benchmarks/inference.py --device cuda --amp

Methods:

* ``medsyn``: :func:`medsyn.inference.sliding_window.predict_volume_25d` (stacks gathered batch
  by batch, windows of several slices per batch; on the CPU it hands the model channels-last
  batches by default, as ``medsyn predict`` does — ``--medsyn-layout nchw`` turns that off to
  measure the same memory layout as the others).
* ``monai``: what a MONAI user writes for 2.5D: build the ``(Z, M·k, X, Y)`` stack tensor of the
  whole volume (replicated first/last slices) and call ``monai.inferers.sliding_window_inference``
  with the 2D ROI and ``sw_batch_size`` = our batch size.
* ``loop``: per slice, per window: cut the 2.5D patch with numpy, ``model(patch[None])`` under
  ``torch.no_grad``, accumulate weighted predictions. Same window positions and weights.

Prints times, ratios and peak memory, and checks that the three outputs agree.
This is a script, not a test: it never runs under pytest.
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

METHODS = ("medsyn", "monai", "loop")


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
    p.add_argument("--amp", action="store_true", help="torch.autocast: bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds of all methods, interleaved (A B C A B C …); each method's fastest run is reported")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--medsyn-layout", choices=("auto", "nchw"), default="auto",
                   help="medsyn's batches: auto (channels-last on CPU, medsyn's default) or plain NCHW")
    p.add_argument("--quick", action="store_true", help="small problem: 96×96×24, 64² windows")
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
    """``(M, X, Y, Z)`` float32 in [-1, 1]."""
    if args.volume is not None:
        import nibabel as nib

        data = np.asarray(nib.as_closest_canonical(nib.load(args.volume)).dataobj, dtype=np.float32)
        lo, hi = float(data.min()), float(data.max())
        data = 2 * (data - lo) / max(hi - lo, 1e-6) - 1
        return np.repeat(data[None], args.modalities, axis=0)
    rng = np.random.default_rng(0)
    return rng.uniform(-1, 1, size=(args.modalities, *args.shape)).astype(np.float32)


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


def run_medsyn(model, volume, args, device, amp_dtype):
    from medsyn.inference.sliding_window import predict_volume_25d

    return predict_volume_25d(
        model, volume, slice_axis=2, context=args.context, patch_size=tuple(args.patch), overlap=args.overlap,
        blend=args.blend, batch_size=args.batch, device=device, autocast_dtype=amp_dtype,
        channels_last=None if args.medsyn_layout == "auto" else False,
    )


def run_monai(model, volume, args, device, amp_dtype):
    import contextlib

    import torch
    from monai.inferers import sliding_window_inference

    k, (m, x, y, z) = args.context, volume.shape
    vol = torch.as_tensor(volume, device=device)
    idx = torch.clamp(torch.arange(z, device=device)[:, None] + torch.arange(k, device=device) - k // 2, 0, z - 1)
    stack = vol[:, :, :, idx].permute(3, 0, 4, 1, 2).reshape(z, m * k, x, y)  # (Z, M·k, X, Y), slices replicated
    mode = "gaussian" if args.blend == "gaussian" else "constant"
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        out = sliding_window_inference(stack, tuple(args.patch), args.batch, model, overlap=args.overlap, mode=mode)
    return out.float().permute(1, 2, 3, 0).cpu().numpy()  # (C, X, Y, Z)


def run_loop(model, volume, args, device, amp_dtype):
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


def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else None
    volume = load_volume(args)
    model, model_name = build_model(args, device)
    # warm-up: one call with the method's batch shape (oneDNN/cuDNN set-up is not inference time)
    warm_batch = 1 if args.worker == "loop" else args.batch
    with torch.inference_mode():
        model(torch.zeros(warm_batch, model_in(args), *args.patch, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # imports outside the timed region (importing MONAI alone takes seconds)
    if args.worker == "medsyn":
        import medsyn.inference.sliding_window  # noqa: F401
    elif args.worker == "monai":
        import monai.inferers  # noqa: F401
    rss_before = _rss_mb()
    run = {"medsyn": run_medsyn, "monai": run_monai, "loop": run_loop}[args.worker]
    t0 = time.perf_counter()
    out = run(model, volume, args, device, amp_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    np.save(args.out, out)
    result = {
        "method": args.worker,
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        "model": model_name,
        "threads": torch.get_num_threads(),
        "shape": list(volume.shape),
    }
    print("RESULT " + json.dumps(result), flush=True)


def model_in(args) -> int:
    return args.modalities * args.context


# ------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    base_argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    results = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(max(1, args.repeat)):  # interleaved rounds: load changes hit every method alike
            for method in args.methods:
                out = Path(tmp) / f"{method}.npy"
                cmd = [sys.executable, __file__, *base_argv, "--worker", method, "--out", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    print(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
                    return 1
                r = json.loads(line[len("RESULT "):])
                print(f"  round {round_ + 1}: {method:7s} {r['seconds']:.1f} s, "
                      f"1-min load {os.getloadavg()[0]:.1f}", flush=True)
                if method not in results or r["seconds"] < results[method]["seconds"]:
                    results[method] = r
                results[method]["output"] = np.load(out)

    first = next(iter(results.values()))
    m, x, y, z = first["shape"]
    n_windows = z * _count(x, args.patch[0], args.overlap) * _count(y, args.patch[1], args.overlap)
    print()
    print(f"volume (M, X, Y, Z) = {tuple(first['shape'])}, k = {args.context}, windows {tuple(args.patch)}, "
          f"overlap {args.overlap}, {args.blend} blending, batch {args.batch}, {n_windows} windows")
    print(f"model: {first['model']} (base {args.base}), device {args.device}, amp {args.amp}, "
          f"torch threads {first['threads']}, {os.cpu_count()} CPUs, medsyn layout {args.medsyn_layout}, "
          f"1-min load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (a shared machine slows "
          "small-batch runs most)")
    print()
    print(f"{'method':8s} {'seconds':>9s} {'ms/window':>10s} {'peak RSS MB':>12s} {'+ over setup MB':>16s}"
          + (f" {'CUDA peak MB':>13s}" if args.device.startswith("cuda") else ""))
    for name, r in results.items():
        line = (f"{name:8s} {r['seconds']:9.2f} {1000 * r['seconds'] / n_windows:10.1f} {r['peak_rss_mb']:12.0f} "
                f"{r['peak_rss_mb'] - r['rss_before_mb']:16.0f}")
        if r["cuda_peak_mb"] is not None:
            line += f" {r['cuda_peak_mb']:13.0f}"
        print(line)
    print()
    if "medsyn" in results:
        t = results["medsyn"]["seconds"]
        for other in ("monai", "loop"):
            if other in results:
                ratio = results[other]["seconds"] / t
                print(f"medsyn vs {other:5s}: {ratio:5.2f}x {'faster' if ratio >= 1 else 'slower'} "
                      f"({results[other]['seconds']:.1f} s / {t:.1f} s)")
    tol = 5e-2 if args.amp else 1e-4
    ok = True
    names = list(results)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            diff = float(np.abs(results[names[a]]["output"] - results[names[b]]["output"]).max())
            agree = diff <= tol
            ok &= agree
            print(f"max |{names[a]} - {names[b]}| = {diff:.2e} ({'agree' if agree else 'DISAGREE'}, tol {tol:g})")
    return 0 if ok else 1


def _count(size: int, patch: int, overlap: float) -> int:
    if size <= patch:
        return 1
    step = max(1, int(patch * (1 - overlap)))
    return len(range(0, size - patch, step)) + 1


if __name__ == "__main__":
    sys.exit(main())
