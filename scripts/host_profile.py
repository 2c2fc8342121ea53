"""Where the time of a small fused conv goes: host microseconds per call (launches queued
behind a GPU sleep, so the host never waits), GPU microseconds per call (torch.profiler's
kernel times) and the do_bench median, for eager, Inductor and fx_fuse called at each layer
(backend, op, its C++ CUDA kernel, the fused kernels' binding); optionally the top of a
cProfile of the backend path, or the host time of each step of the op's CUDA path.

    python scripts/host_profile.py                 # the benchmark's small cases
    python scripts/host_profile.py --profile tiny  # and a cProfile of that case
    python scripts/host_profile.py --parts --cases tiny
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import pstats
import sys
import time
from pathlib import Path

import torch
from torch._prims_common import suggest_memory_format

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _timing import bench_ms, gpu_us, table  # noqa: E402
from bench_conv import CASES, MORE_CASES, ConvReluAdd  # noqa: E402

import fx_fuse  # noqa: E402
from fx_fuse import _cuda  # noqa: E402


def host_us(fn, calls: int = 100) -> float:
    """Host time per call with the GPU busy sleeping, so no launch waits for a free slot."""
    fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second at H100 clocks
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def functions(case, model, x):
    conv = model.conv
    stride, padding, dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
    ext = fx_fuse._build.load()
    out = fx_fuse.conv2d_relu_add(x, conv.weight, conv.bias, model.bias, stride, padding)
    tf32 = torch.backends.cudnn.allow_tf32
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    # the binding runs the patch kernel where the op's rules pick it
    patch_runs = _cuda._patch_enabled() and _cuda._patch_runs(
        x, conv.weight, stride, padding, dilation
    )
    patch = _cuda._path(x, conv.weight, out.shape, stride, tf32, sms, patch_runs) == "patch"
    return {
        "eager": lambda: model(x),
        "inductor": torch.compile(model),
        "backend": torch.compile(model, backend="fx_fuse"),
        "backend inner=eager": torch.compile(
            model, backend="fx_fuse", options={"inner": "eager"}
        ),
        "op": lambda: torch.ops.fx_fuse.conv2d_relu_add.default(
            x, conv.weight, conv.bias, model.bias, stride, padding, dilation, 1
        ),
        "C++ kernel": lambda: ext.conv2d_relu_add(
            x, conv.weight, conv.bias, model.bias, stride, padding, dilation, 1
        ),
        "reference": lambda: fx_fuse.ops.reference(
            x, conv.weight, conv.bias, model.bias, stride, padding, dilation, 1
        ),
        "binding": lambda: ext.conv2d_relu_add_out(
            x, conv.weight, conv.bias, model.bias.expand(out.shape), 0.0, stride, padding,
            dilation, tf32, True, patch, out,
        ),
    }


def parts(case) -> None:
    """Host microseconds of each step of the op's CUDA path, on the case's tensors."""
    model = ConvReluAdd(case.x_shape[1], case.cout, case.k, case.stride, case.padding)
    model = model.cuda().to(case.dtype)
    x = torch.rand(case.x_shape, device="cuda", dtype=case.dtype)
    conv = model.conv
    w, b, other = conv.weight.detach(), conv.bias.detach(), model.bias.detach()
    stride, padding, dilation = list(conv.stride), list(conv.padding), list(conv.dilation)
    args = (x, w, b, other, stride, padding, dilation, 1)
    out_shape = fx_fuse.ops.output_shape(x, w, stride, padding, dilation)
    steps = {
        "ops.check_args": lambda: fx_fuse.ops.check_args(*args),
        "ops.output_memory_format": lambda: fx_fuse.ops.output_memory_format(x, w),
        "suggest_memory_format": lambda: suggest_memory_format(x),
        "x.contiguous(format)": lambda: x.contiguous(memory_format=torch.contiguous_format),
        "_cuda._max_image_offset": lambda: _cuda._max_image_offset(x, w, padding, dilation),
        "ops.output_shape": lambda: fx_fuse.ops.output_shape(x, w, stride, padding, dilation),
        "_cuda._patch_runs": lambda: _cuda._patch_runs(x, w, stride, padding, dilation),
        "_cuda._path": lambda: _cuda._path(x, w, out_shape, stride, True, 132, True),
        "torch.empty": lambda: torch.empty(out_shape, device="cuda"),
        "torch.conv2d, no bias": lambda: torch.conv2d(x, w, None, stride, padding, dilation),
        "torch.cudnn_convolution": lambda: torch.cudnn_convolution(
            x, w, padding, stride, dilation, 1, False, False, True
        ),
        "_cuda._use_wgmma": lambda: _cuda._use_wgmma(x.device),
        "allow_tf32 flag": lambda: bool(torch.backends.cudnn.allow_tf32),
        "_cuda.plan (once per signature)": lambda: _cuda.plan(*args),
        "C++ kernel": lambda: _cuda.conv2d_relu_add(*args),
        "op (no_grad)": lambda: torch.ops.fx_fuse.conv2d_relu_add.default(*args),
    }
    cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
    steps["op on CPU tensors"] = lambda: torch.ops.fx_fuse.conv2d_relu_add.default(*cpu)
    steps["ops.reference on CPU tensors"] = lambda: fx_fuse.ops.reference(*cpu)
    rows = []
    with torch.no_grad():
        for name, fn in steps.items():
            rows.append([case.name, name, host_us(fn, calls=200)])
    print(table(rows, ["case", "step", "host us/call"]))


def profile_backend(fn, x, label: str) -> None:
    """Print the top of a cProfile of 200 calls (the GPU kept busy, so no call waits)."""
    fn(x)
    torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        fn(x)
    prof.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    print(f"--- cProfile, backend, {label}, 200 calls")
    print(s.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="resnet,stem,tiny",
                        help="comma-separated parts of case names (the panel's and --more's)")
    parser.add_argument("--profile", default="", help="cProfile the backend on this case")
    parser.add_argument("--parts", action="store_true", help="time each step of the op")
    args = parser.parse_args()
    cases = [c for c in CASES + MORE_CASES if any(key in c.name for key in args.cases.split(","))]
    if args.parts:
        for case in cases:
            parts(case)
        return
    rows = []
    for case in cases:
        for mode in ("no_grad", "grad"):
            torch._dynamo.reset()
            model = ConvReluAdd(case.x_shape[1], case.cout, case.k, case.stride, case.padding)
            model = model.cuda().to(case.dtype).requires_grad_(mode == "grad")
            x = torch.rand(case.x_shape, device="cuda", dtype=case.dtype)
            ctx = torch.no_grad() if mode == "no_grad" else contextlib.nullcontext()
            with ctx:
                fns = functions(case, model, x)
                if mode == "grad":
                    del fns["reference"]  # an out= ATen op: no autograd
                for name, fn in fns.items():
                    fn = (lambda fn=fn: fn(x)) if name in ("inductor", "backend",
                                                           "backend inner=eager") else fn
                    gpu, kernels = gpu_us(fn)
                    rows.append([case.name, mode, name, host_us(fn), gpu,
                                 bench_ms(fn)["ms"] * 1e3])
                    print(rows[-1], "; ".join(f"{k} {us:.1f}" for k, us in kernels), flush=True)
                if args.profile and args.profile in case.name:
                    profile_backend(fns["backend"], x, f"{case.name} {mode}")
    print(table(rows, ["case", "mode", "path", "host us/call", "GPU us/call", "do_bench us"]))


if __name__ == "__main__":
    main()
