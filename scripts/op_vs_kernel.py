"""The headline op against its kernels: where its time goes beyond them.

For each headline form (fp32 NCHW, fp32 channels-last, bf16 NCHW) it prints:
  - the op's ``do_bench`` median with the L2 flushed, as the benchmarks time it;
  - one profiled loop of 20 calls back to back: the GPU time a call from the first
    kernel's start to the last one's end, the kernels' busy time a call, the idle gaps
    between kernels, and the main kernel's range;
  - the op's and cuDNN's conv2d's times a call by events, back to back and after other
    work on the GPU before each call (zeroing 256 MB, as the benchmarks' L2 flush does;
    reading 256 MB, which leaves the L2 clean; both), with a sync after each call;
  - the SM clock, board power and clock-limit reasons that ``nvidia-smi`` samples while
    the form runs::

    python scripts/op_vs_kernel.py
"""

from __future__ import annotations

import statistics
import subprocess
import time
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
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


def profiled_loop(fn: Callable[[], object], calls: int = 20) -> str:
    """Span, busy time and gaps a call of `calls` back-to-back calls, from the profiler."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    span = kernels[-1].time_range.end - kernels[0].time_range.start
    busy = sum(e.time_range.elapsed_us() for e in kernels)
    gaps = sorted(b.time_range.start - a.time_range.end for a, b in zip(kernels, kernels[1:]))
    main = sorted(e.time_range.elapsed_us() / 1000 for e in kernels if e.time_range.elapsed_us() > 300)
    main_range = f"{main[0]:.3f}-{main[-1]:.3f} ms" if main else "none over 0.3 ms"
    return (f"{len(kernels) // calls} kernels a call; a call {span / calls / 1000:.4f} ms, busy "
            f"{busy / calls / 1000:.4f} ms; gaps between kernels: median {gaps[len(gaps) // 2]:.1f} us, "
            f"{sum(gaps) / calls:.1f} us a call; main kernel {main_range}")


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


def after(fn: Callable[[], object], before: Callable[[], object], calls: int = 20) -> float:
    """Median ms of fn, timed by events, each call after `before` (and three warm-up calls)."""
    times = []
    for i in range(calls + 3):
        before()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def befores() -> Dict[str, Callable[[], object]]:
    """What the GPU does before each timed call."""
    buf = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    read = buf.view(torch.int32).amax
    return {"zeroing 256 MB": buf.zero_, "reading 256 MB": read, "both": lambda: (buf.zero_(), read())}


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
        print(f"{label}: do_bench (L2 flushed) {flushed:.3f} ms")
        print(f"    back to back, profiled: {profiled_loop(fn)}")
        x, w, b = args[:3]
        for name, f in (("the op", fn), ("cuDNN's conv2d", lambda: F.conv2d(x, w, b))):
            times = [f"back to back {back_to_back_ms(f):.3f}"]
            times += [f"after {what} {after(f, before):.3f}" for what, before in befores().items()]
            print(f"    {name}, ms a call by events: " + ", ".join(times))
        mhz, watts, reasons = clock_under(fn)
        print(f"    SM clock under load {mhz:.0f} MHz, board {watts:.0f} W, clock-limit reasons {reasons}")
    mhz, watts, reasons = clock_under(lambda: time.sleep(0.01), 0.6)
    print(f"idle: SM clock {mhz:.0f} MHz, board {watts:.0f} W, clock-limit reasons {reasons}")


if __name__ == "__main__":
    main()
