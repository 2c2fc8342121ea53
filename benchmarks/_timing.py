"""Shared helpers of the benchmarks: a layer's inputs, do_bench medians (Triton flushes the
L2 before every call, so small problems are timed cold, as in a network), FLOP counts, and a
table."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor


def conv_inputs(
    x_shape: Sequence[int],
    cout: int,
    k: int,
    dtype: torch.dtype,
    groups: int = 1,
    channels_last: bool = False,
    generator: Optional[torch.Generator] = None,
    device: str = "cuda",
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The op's x, weight, bias and per-channel `other` for a k x k layer: x uniform in
    [0, 1] (drawn in fp32, then cast to `dtype`), the weights scaled by their fan-in; x and
    the weights channels-last if asked. Drawn in that order from `generator` (seeded: the
    same inputs in every process)."""
    draw = dict(device=device, generator=generator)
    cin = x_shape[1] // groups
    x = torch.rand(tuple(x_shape), **draw).to(dtype)
    w = (torch.randn(cout, cin, k, k, **draw) / (cin * k * k) ** 0.5).to(dtype)
    b = torch.randn(cout, **draw).to(dtype)
    other = torch.randn(cout, 1, 1, **draw).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    return x, w, b, other


def bench_ms(fn: Callable[[], object], warmup_ms: int = 50, rep_ms: int = 300) -> Dict[str, float]:
    """Median, p20 and p80 in milliseconds (``triton.testing.do_bench``, CUDA events)."""
    from triton.testing import do_bench

    fn()  # compile / build / autotune outside the timed region
    torch.cuda.synchronize()
    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"ms": med, "p20": p20, "p80": p80}


def gpu_us(fn: Callable[[], object], calls: int = 20):
    """Kernel time per call on the GPU (the CUDA kernels torch.profiler records, L2 warm):
    the total, and each kernel's name with its microseconds per call."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = [(e.key[:60], e.device_time_total / calls) for e in prof.key_averages()
               if e.device_time_total > 0]
    return sum(us for _, us in kernels), kernels


def conv_flops(n: int, cin: int, cout: int, oh: int, ow: int, kh: int, kw: int) -> float:
    """Multiply-adds of the convolution counted as 2 FLOPs (the epilogue is not counted)."""
    return 2.0 * n * cout * oh * ow * cin * kh * kw


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def table(rows: List[Sequence], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, floatfmt=".3f")
