"""The headline op against its kernels: where its time goes beyond them.

For each headline form (fp32 NCHW, fp32 channels-last, bf16 NCHW) it prints the op's
``do_bench`` median with the L2 flushed (as the benchmarks time it), its time a call back
to back, the kernels of one flushed call with their durations (the profiler), the span of
each call's kernels, and the SM clock and board power that ``nvidia-smi`` samples while
each form runs::

    python scripts/op_vs_kernel.py
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Callable, List, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

import fx_fuse  # noqa: F401  (registers the op)

OP = torch.ops.fx_fuse.conv2d_relu_add.default
FORMS = (("fp32 NCHW", torch.float32, False), ("fp32 channels-last", torch.float32, True),
         ("bf16 NCHW", torch.bfloat16, False))


def headline_args(dtype: torch.dtype, channels_last: bool) -> tuple:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(128, 64, 128, 128, device="cuda", generator=g).to(dtype)
    w = (torch.randn(128, 64, 3, 3, device="cuda", generator=g) / 24).to(dtype)
    b = torch.randn(128, device="cuda", generator=g).to(dtype)
    other = torch.randn(128, 1, 1, device="cuda", generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    return (x, w, b, other, [1, 1], [0, 0], [1, 1], 1)


def back_to_back_ms(fn: Callable[[], object], calls: int = 30) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(5):
        fn()
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls


def kernels_per_call(fn: Callable[[], object], calls: int = 6) -> List[Tuple[float, list]]:
    """(span ms, [(kernel, ms)]) of each call, each after an L2 flush and a pause."""
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            flush.zero_()
            torch.cuda.synchronize()
            time.sleep(0.002)  # a gap that separates the calls in the trace
            fn()
            torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
                      and "zero" not in e.name and "fill" not in e.name.lower()),
                     key=lambda e: e.time_range.start)
    groups: List[list] = []
    for e in kernels:
        if not groups or e.time_range.start - groups[-1][-1].time_range.end > 1000:
            groups.append([])
        groups[-1].append(e)
    return [((g[-1].time_range.end - g[0].time_range.start) / 1000,
             [(e.name, e.time_range.elapsed_us() / 1000) for e in g]) for g in groups]


def clock_under(fn: Callable[[], object], seconds: float = 1.5) -> Tuple[float, float, str]:
    """Median SM clock (MHz), board power (W) and the most frequent clock-limit reasons
    (nvidia-smi's bit mask) while fn runs in a loop."""
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,clocks_throttle_reasons.active",
                            "--format=csv,noheader,nounits", "-lms", "50"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    end = time.time() + seconds
    while time.time() < end:
        fn()
        torch.cuda.synchronize()
    smi.terminate()
    rows = [line.split(",") for line in smi.communicate()[0].splitlines() if line.count(",") == 2]
    rows = rows[6:]  # past the samples taken before the loop
    return (statistics.median(float(r[0]) for r in rows), statistics.median(float(r[1]) for r in rows),
            statistics.mode(r[2].strip() for r in rows))


def main() -> None:
    from triton.testing import do_bench

    torch.backends.cudnn.allow_tf32 = True
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    for label, dtype, channels_last in FORMS:
        args = headline_args(dtype, channels_last)
        fn = lambda: OP(*args)  # noqa: E731
        flushed = do_bench(fn, warmup=100, rep=600, return_mode="median")
        calls = kernels_per_call(fn)
        spans = sorted(span for span, _ in calls)
        print(f"{label}: do_bench (L2 flushed) {flushed:.3f} ms, back to back {back_to_back_ms(fn):.3f} ms a call, "
              f"kernels' span a call {spans[0]:.3f}-{spans[-1]:.3f} ms")
        for name, ms in calls[len(calls) // 2][1]:
            print(f"    {ms:.4f} ms  {name[:70]}")
        mhz, watts, reasons = clock_under(fn)
        print(f"    SM clock under load {mhz:.0f} MHz, board {watts:.0f} W, clock-limit reasons {reasons}")
    mhz, watts, reasons = clock_under(lambda: time.sleep(0.01), 0.6)
    print(f"idle: SM clock {mhz:.0f} MHz, board {watts:.0f} W, clock-limit reasons {reasons}")


if __name__ == "__main__":
    main()
