"""Benchmark relu(conv2d(x)) + bias: eager, Inductor (``torch.compile`` default) and fx_fuse
(``torch.compile(backend="fx_fuse")`` when that backend is registered, else the op called
directly), in no_grad and in grad mode (parameters requiring grad, as KernelBench and
training call it). Prints a table of median ms, TFLOP/s and speedups, and the geometric
mean of the speedups over the faster peer.

Each time is the median of ``--rounds`` do_bench medians, the contenders taken in turn in
every round: small problems are host-bound, and their readings move with the machine's
state from one run to the next; taking turns spreads that drift over all of them alike.

    python benchmarks/bench_conv.py                  # the panel
    python benchmarks/bench_conv.py --more           # a wider list of layers
    python benchmarks/bench_conv.py --compile-mode reduce-overhead  # CUDA graphs
    python benchmarks/bench_conv.py --only headline  # names containing "headline"
    python benchmarks/bench_conv.py --modes no_grad --no-inductor
    python benchmarks/bench_conv.py --cudnn-benchmark  # every contender in cuDNN's
        # benchmark mode (fx_fuse then times its paths once per layer: fx_fuse._autotune)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_ms, conv_flops, table, tflops  # noqa: E402

import fx_fuse  # noqa: E402


@dataclass
class Case:
    name: str
    x_shape: Tuple[int, int, int, int]
    cout: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    tf32: bool = True


CASES = [
    Case("headline fp32 NCHW", (128, 64, 128, 128), 128, 3),
    Case("headline fp32 channels_last", (128, 64, 128, 128), 128, 3, channels_last=True),
    Case("headline bf16", (128, 64, 128, 128), 128, 3, dtype=torch.bfloat16),
    Case("headline fp32 TF32 off", (128, 64, 128, 128), 128, 3, tf32=False),
    Case("resnet 3x3 56px", (32, 64, 56, 56), 64, 3, padding=1),
    Case("resnet 3x3 28px", (32, 128, 28, 28), 128, 3, padding=1),
    Case("resnet 3x3 14px", (32, 256, 14, 14), 256, 3, padding=1),
    Case("stem 7x7 s2", (32, 3, 224, 224), 64, 7, stride=2, padding=3),
    Case("tiny 16px", (1, 16, 16, 16), 16, 3, padding=1),
]

# Layers beyond the panel's, for a wider look (``--more``)
MORE_CASES = [
    Case("3 channels 32px b128", (128, 3, 32, 32), 16, 3),
    Case("8 channels 256px b32", (32, 8, 256, 256), 64, 3),
    Case("16 channels 128px b64", (64, 16, 128, 128), 64, 3, padding=1),
    Case("1x1 256->64 56px", (32, 256, 56, 56), 64, 1),
    Case("1x1 128->512 28px", (32, 128, 28, 28), 512, 1),
    Case("3x3 s2 56px", (32, 64, 56, 56), 128, 3, stride=2, padding=1),
    Case("5x5 64px", (32, 32, 64, 64), 64, 5, padding=2),
    Case("3x3 dilation 2 64px", (16, 64, 64, 64), 64, 3, padding=2, dilation=2),
    Case("depthwise 3x3 56px", (32, 144, 56, 56), 144, 3, padding=1, groups=144),
    Case("depthwise 3x3 112px", (32, 32, 112, 112), 32, 3, padding=1, groups=32),
    Case("depthwise 3x3 14px", (32, 576, 14, 14), 576, 3, padding=1, groups=576),
    Case("depthwise 3x3 x2 56px", (32, 64, 56, 56), 128, 3, padding=1, groups=64),
    Case("depthwise 7x7 56px", (32, 128, 56, 56), 128, 7, padding=3, groups=128),
    Case("depthwise 5x5 s2 28px", (32, 240, 28, 28), 240, 5, stride=2, padding=2, groups=240),
    Case("depthwise 3x3 56px fp16 channels_last", (32, 144, 56, 56), 144, 3, padding=1,
         groups=144, dtype=torch.float16, channels_last=True),
    Case("depthwise 7x7 56px channels_last", (32, 96, 56, 56), 96, 7, padding=3, groups=96,
         channels_last=True),  # ConvNeXt's first stage
    Case("grouped 3x3 g32 56px", (32, 128, 56, 56), 128, 3, padding=1, groups=32),
    Case("batch 1 256 channels 64px", (1, 256, 64, 64), 256, 3, padding=1),
    Case("non-square 32x128", (32, 64, 32, 128), 64, 3, padding=1),
    Case("VGG 64 channels 224px b16", (16, 64, 224, 224), 64, 3, padding=1),
    Case("resnet 28px bf16", (32, 128, 28, 28), 128, 3, padding=1, dtype=torch.bfloat16),
    Case("resnet 56px fp16 channels_last", (32, 64, 56, 56), 64, 3, padding=1,
         dtype=torch.float16, channels_last=True),
    Case("stem 3x3 s2 224px", (32, 3, 224, 224), 32, 3, stride=2, padding=1),
    Case("1x1 256->256 56px bf16", (32, 256, 56, 56), 256, 1, dtype=torch.bfloat16),
    Case("3x3 s2 128->256 56px bf16", (32, 128, 56, 56), 256, 3, stride=2, padding=1,
         dtype=torch.bfloat16),
    Case("VGG 256 channels 56px b16 bf16", (16, 256, 56, 56), 256, 3, padding=1,
         dtype=torch.bfloat16),
]


class ConvReluAdd(nn.Module):
    """KernelBench level 2 problem 1: conv -> relu -> + bias (Cout, 1, 1)."""

    def __init__(self, cin, cout, k, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups)
        self.bias = nn.Parameter(torch.randn(cout, 1, 1) * 0.02)

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.bias


def fx_fuse_backend_registered() -> bool:
    import torch._dynamo

    return "fx_fuse" in torch._dynamo.list_backends()


def run_case(case: Case, mode: str, inductor: bool, backend: bool, rounds: int,
             compile_mode: Optional[str]):
    torch._dynamo.reset()  # every case compiles fresh (one model class, many instances)
    torch.backends.cudnn.allow_tf32 = case.tf32
    torch.backends.cuda.matmul.allow_tf32 = case.tf32
    n, cin = case.x_shape[:2]
    model = ConvReluAdd(cin, case.cout, case.k, case.stride, case.padding, case.dilation,
                        case.groups).cuda().to(case.dtype)
    x = torch.rand(case.x_shape, device="cuda", dtype=case.dtype)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.requires_grad_(mode == "grad")
    ctx = torch.no_grad if mode == "no_grad" else contextlib.nullcontext

    if backend:
        fused_fn = torch.compile(model, backend="fx_fuse", mode=compile_mode)
    else:
        conv = model.conv

        def fused_fn(x):
            return fx_fuse.conv2d_relu_add(
                x, conv.weight, conv.bias, model.bias, conv.stride, conv.padding,
                conv.dilation, conv.groups,
            )

    fns = {"eager": model, "fx_fuse": fused_fn}
    if inductor:
        fns["inductor"] = torch.compile(model, mode=compile_mode)
    samples = {name: [] for name in fns}
    with ctx():
        ref = model(x)
        out = fused_fn(x)
        err = (out.float() - ref.float()).abs().max().item()
        for _ in range(rounds):
            for name, fn in fns.items():
                samples[name].append(bench_ms(lambda fn=fn: fn(x))["ms"])
    times = {name: statistics.median(ms) for name, ms in samples.items()}
    oh, ow = ref.shape[2:]
    flops = conv_flops(n, cin // case.groups, case.cout, oh, ow, case.k, case.k)
    return times, flops, err


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--more", action="store_true", help="the wider list of layers")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, both compilers")
    parser.add_argument("--modes", default="no_grad,grad")
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--direct", action="store_true", help="call the op, not the backend")
    parser.add_argument("--rounds", type=int, default=3, help="do_bench medians per time")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="torch.backends.cudnn.benchmark on, for every contender")
    args = parser.parse_args(argv)
    import torch._dynamo

    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    torch._dynamo.config.recompile_limit = 64
    backend = fx_fuse_backend_registered() and not args.direct
    how = (f"torch.compile(backend='fx_fuse', mode={args.compile_mode!r})" if backend
           else "the op called directly")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fx_fuse via {how}, "
          f"cudnn.benchmark={args.cudnn_benchmark}")
    rows = []
    for case in MORE_CASES if args.more else CASES:
        if args.only not in case.name:
            continue
        for mode in args.modes.split(","):
            times, flops, err = run_case(case, mode, not args.no_inductor, backend, args.rounds,
                                         args.compile_mode)
            ind = times.get("inductor", float("nan"))
            best_peer = min(times["eager"], ind) if ind == ind else times["eager"]
            rows.append([
                case.name, mode, times["eager"], ind, times["fx_fuse"],
                tflops(flops, times["fx_fuse"]), times["eager"] / times["fx_fuse"],
                ind / times["fx_fuse"], best_peer / times["fx_fuse"], f"{err:.1e}",
            ])
            print(rows[-1], flush=True)
    headers = ["case", "mode", "eager ms", "inductor ms", "fx_fuse ms", "fx_fuse TFLOP/s",
               "x eager", "x inductor", "x best peer", "max|diff|"]
    print(table(rows, headers))
    speedups = [row[8] for row in rows]
    if speedups:
        geomean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
        print(f"geometric mean of x best peer over {len(rows)} rows: {geomean:.2f}")


if __name__ == "__main__":
    main()
