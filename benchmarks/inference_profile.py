"""Where the time of a sliding-window forward goes: per-op profile and per-layer GFLOP/s.

For UNet25D (random weights, BatchNorm folded as ``medsyn predict`` does) on one batch of
``--batch`` windows of ``k``×``--patch`` (default 16 of 5×144², the batch ``predict_volume_25d``
hands the model), prints:

1. ``torch.profiler`` self-CPU time per ATen op over ``--steps`` forwards of each variant
   (``--variants``), so convolution vs ReLU / concat / pooling / transposed convolution / layout
   reorders can be read off;
2. every convolution and transposed convolution of the network timed alone on its own input
   shape (channels-last, best of ``--repeats``), with its FLOPs and achieved GFLOP/s against the
   128→128 3×3 conv peak of ``benchmarks/_peak.py`` measured in the same run;
3. the forward's median time per variant, interleaved (A B A B …) so load changes hit all alike.

Variants: ``eager`` (folded module, channels-last input: medsyn before the fusion), ``fused``
(:func:`medsyn.inference.speedups.prepare_for_inference`: what ``medsyn predict`` runs), ``nchw``
(the same, contiguous NCHW input), ``jit`` (``torch.jit.trace`` + ``torch.jit.freeze`` +
``torch.jit.optimize_for_inference``: the oneDNN-layout path), ``mkldnn``
(``torch.utils.mkldnn.to_mkldnn`` on the folded module, input converted with ``.to_mkldnn()``;
fails on UNet25D: ``torch.cat`` of mkldnn tensors is not supported, and it is reported as such).

    python benchmarks/inference_profile.py --base 64 --threads 2
    python benchmarks/inference_profile.py --base 32 --variants eager jit --steps 3

A script, not a test; its numbers depend on the machine's load (printed with them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _peak import count_flops, describe_peak, measure_peak  # noqa: E402

VARIANTS = ("eager", "fused", "nchw", "jit", "mkldnn")


def build(base: int, in_channels: int):
    from medsyn.inference.speedups import fold_batchnorm
    from medsyn.models.generators.unet25d import UNet25D

    torch.manual_seed(0)
    model = UNet25D(in_channels=in_channels, out_channels=1, base=base).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    return model, fold_batchnorm(model)


def freeze_for_inference(model: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` + ``torch.jit.freeze`` + ``torch.jit.optimize_for_inference`` of ``model``.

    ``example``: one input batch ``(B, C, H, W)`` (channels-last on CPU, as the sliding window
    hands it). On CPU ``optimize_for_inference`` folds conv-bn, fuses conv-add/relu and runs the
    convolutions in oneDNN's blocked layout between them. Tracing records the ops of this one
    call: Python control flow on the input (UNet25D's shape check) is not re-run.
    """
    import warnings

    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def prepare(variant: str, folded: torch.nn.Module, example: torch.Tensor):
    """``(callable taking an NCHW float tensor, description)`` for one variant."""
    if variant == "eager":
        return lambda x: folded(x.contiguous(memory_format=torch.channels_last)), "folded, channels-last input"
    if variant == "fused":
        from medsyn.inference.speedups import prepare_for_inference

        fused = prepare_for_inference(folded)
        return lambda x: fused(x.contiguous(memory_format=torch.channels_last)), "medsyn predict's: + conv/ReLU fused, split concat"
    if variant == "nchw":
        return lambda x: folded(x.contiguous()), "folded, NCHW input"
    if variant == "jit":
        frozen = freeze_for_inference(folded, example)
        return lambda x: frozen(x.contiguous(memory_format=torch.channels_last)), "jit.trace+freeze+optimize_for_inference"
    if variant == "mkldnn":
        from torch.utils import mkldnn as mkldnn_utils

        net = mkldnn_utils.to_mkldnn(folded)
        return lambda x: net(x.to_mkldnn()).to_dense(), "torch.utils.mkldnn.to_mkldnn (blocked layout end to end)"
    raise SystemExit(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def per_layer(folded: torch.nn.Module, x: torch.Tensor, peak: float, repeats: int) -> None:
    shapes: list[tuple[str, torch.nn.Module, tuple]] = []
    hooks = []
    for name, mod in folded.named_modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            hooks.append(mod.register_forward_hook(
                lambda m, inp, out, name=name: shapes.append((name, m, tuple(inp[0].shape)))))
    with torch.inference_mode():
        folded(x.contiguous(memory_format=torch.channels_last))
    for h in hooks:
        h.remove()
    print(f"\nper layer (alone, channels-last, best of {repeats}); conv peak {peak:.1f} GFLOP/s")
    print(f"{'layer':28s} {'kind':8s} {'in shape':>22s} {'c_out':>6s} {'GFLOP':>7s} {'ms':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    total_f = total_t = 0.0
    for name, mod, shape in shapes:
        inp = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        mod = mod.to(memory_format=torch.channels_last)
        flops = count_flops(mod, inp)
        with torch.inference_mode():
            mod(inp)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                mod(inp)
                best = min(best, time.perf_counter() - t0)
        rate = flops / best / 1e9
        total_f += flops
        total_t += best
        kind = "convT" if isinstance(mod, torch.nn.ConvTranspose2d) else f"conv{mod.kernel_size[0]}x{mod.kernel_size[1]}"
        print(f"{name:28s} {kind:8s} {str(shape):>22s} {mod.out_channels:6d} {flops / 1e9:7.2f} {1e3 * best:8.1f} "
              f"{rate:8.1f} {100 * rate / peak:7.1f}")
    print(f"{'all convolutions, alone':37s} {'':22s} {total_f / 1e9:7.2f} {1e3 * total_t:8.1f} "
          f"{total_f / total_t / 1e9:8.1f} {100 * total_f / total_t / 1e9 / peak:7.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=5)
    p.add_argument("--patch", type=int, nargs=2, default=(144, 144))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--steps", type=int, default=3, help="forwards per variant under the profiler")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--repeats", type=int, default=3, help="best-of-N for each layer alone and for the peak")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["eager", "fused", "jit"])
    p.add_argument("--skip", nargs="*", choices=("profile", "layers"), default=[])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average before {'/'.join(f'{v:.1f}' for v in os.getloadavg())}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    model, folded = build(args.base, args.context)
    x = torch.randn(args.batch, args.context, *args.patch)
    flops = count_flops(model, x)
    peak = measure_peak("cpu", repeats=args.repeats)
    print(describe_peak(peak))
    print(f"UNet25D base {args.base}, batch {args.batch}×{args.context}×{args.patch[0]}×{args.patch[1]}: "
          f"{flops / 1e9:.1f} GFLOP per forward")
    with torch.inference_mode():
        reference = model(x)
    runs = {}
    for v in args.variants:
        fn, what = prepare(v, folded, x)
        try:
            with torch.inference_mode():
                out = fn(x)
                fn(x)
        except RuntimeError as e:  # e.g. mkldnn: torch.cat of mkldnn tensors is not implemented
            print(f"  {v:7s} ({what}): fails, left out: {str(e).splitlines()[0]}")
            continue
        runs[v] = fn
        print(f"  {v:7s} ({what}): max |out - unfolded eager| = {float((out - reference).abs().max()):.2e}")
    if "profile" not in args.skip:
        from torch.profiler import ProfilerActivity, profile

        for v, fn in runs.items():
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.steps):
                    fn(x)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            print(f"\nprofile {v}: {args.steps} forwards, self CPU time by op (total {total / 1e3 / args.steps:.0f} ms/forward)")
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:14]:
                print(f"  {e.key:42s} {e.self_cpu_time_total / 1e3 / args.steps:9.1f} ms  "
                      f"{100 * e.self_cpu_time_total / total:5.1f} %  calls {e.count // args.steps}")
    if "layers" not in args.skip:
        per_layer(folded, x, peak["conv"], args.repeats)
    times: dict[str, list[float]] = {v: [] for v in runs}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for v, fn in runs.items():
                t0 = time.perf_counter()
                fn(x)
                times[v].append(time.perf_counter() - t0)
    peak_after = measure_peak("cpu", repeats=args.repeats)
    print(f"\nafter: {describe_peak(peak_after)}")
    best_peak = max(peak["conv"], peak_after["conv"])
    print(f"forward time, median of {args.rounds} interleaved rounds (conv peak {best_peak:.1f} GFLOP/s):")
    for v, ts in times.items():
        med = statistics.median(ts)
        rate = flops / med / 1e9
        print(f"  {v:7s} {1e3 * med:9.0f} ms  {1e3 * med / args.batch:7.1f} ms/window  {rate:6.1f} GFLOP/s  "
              f"{100 * rate / best_peak:5.1f} % of conv peak  (all: {', '.join(f'{1e3 * t:.0f}' for t in ts)})")
    print(f"load average after {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
