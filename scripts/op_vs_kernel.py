"""The headline op against its kernels: where its time goes beyond them.

For each headline form (fp32 NCHW, fp32 channels-last, bf16 NCHW) it prints:
  - the op's ``do_bench`` median with the L2 flushed, as the benchmarks time it;
  - one profiled loop of 20 calls back to back: the GPU time a call from the first
    kernel's start to the last one's end, the kernels' busy time a call, the idle gaps
    between kernels, and the main kernel's range;
  - the op's and cuDNN's conv2d's times a call by events, back to back and after other
    work on the GPU before each call (zeroing 256 MB, as the benchmarks' L2 flush does;
    reading 256 MB, which leaves the L2 clean; both), with a sync after each call;
  - ``do_bench``'s own loop profiled (256 MB zeroed before each call, no sync between
    calls), and the same loop with the GPU asleep for ~2 ms after each call: the op by
    events, the main kernel's durations, and the GPU's idle time between the flush and the
    op's first kernel;
  - the SM clock, board power and clock-limit reasons that ``nvidia-smi`` samples while
    the form runs back to back and in ``do_bench``'s loop::

    python scripts/op_vs_kernel.py

With ``--sustained``, only this: for each form, after 2 s with the GPU idle, ``do_bench``'s
loop for 3 s, the op's median by blocks of calls (five of 20, then of 100) beside the SM
clock and board power that ``nvidia-smi`` samples in each block (how the clock settles
under the power cap, and the op's time with it).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _timing import table  # noqa: E402

import fx_fuse  # noqa: E402,F401  (registers the op)

OP = torch.ops.fx_fuse.conv2d_relu_add.default
IDLE_MHZ = 1980  # the SM clock of an idle H100 / H200
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


def flush_buffer() -> torch.Tensor:
    """The buffer ``do_bench`` zeroes before each call to flush the L2 (256 MB of int32)."""
    return torch.empty(int(256e6 // 4), dtype=torch.int, device="cuda")


def flushed_calls(fn: Callable[[], object], cache: torch.Tensor, calls: int,
                  sleep_cycles: int = 0) -> List[float]:
    """``do_bench``'s loop for `calls` calls (zero `cache`, record, fn, record; no sync
    between calls), then a sync: each call's ms by events. With `sleep_cycles`, the GPU
    sleeps that many SM clocks after each call."""
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
             for _ in range(calls)]
    for start, end in pairs:
        cache.zero_()
        start.record()
        fn()
        end.record()
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def flushed_loop(fn: Callable[[], object], pause_ms: float = 0.0, calls: int = 20) -> str:
    """``do_bench``'s loop, profiled; with `pause_ms`, the GPU sleeps that long after each
    call."""
    cache = flush_buffer()
    sleep_cycles = int(pause_ms * IDLE_MHZ * 1e3)  # the sleep counts SM clocks
    flushed_calls(fn, cache, 5, sleep_cycles)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        times = flushed_calls(fn, cache, calls, sleep_cycles)
    kernels = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                     key=lambda e: e.time_range.start)
    flushes = [i for i, e in enumerate(kernels) if "fill" in e.name.lower()]
    waits = sorted(kernels[i + 1].time_range.start - kernels[i].time_range.end
                   for i in flushes if i + 1 < len(kernels))
    main = sorted(e.time_range.elapsed_us() / 1000 for e in kernels
                  if "fx_fuse" in e.name and e.time_range.elapsed_us() > 300)  # not the sleep
    main_range = (f"{main[0]:.3f}-{main[-1]:.3f} (median {main[len(main) // 2]:.3f}) ms"
                  if main else "none over 0.3 ms")
    wait = f"median {waits[len(waits) // 2]:.1f} us" if waits else "no flush kernel found"
    return (f"the op by events {statistics.median(times):.3f} ms; main kernel {main_range}; "
            f"idle between the flush and the op: {wait}")


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


def smi_samples(proc: subprocess.Popen) -> List[Tuple[float, float, float]]:
    """(host time, SM clock MHz, board W) of each sample of a finished `nvidia-smi` run
    that queried timestamp,clocks.sm,power.draw."""
    samples = []
    for line in proc.communicate()[0].splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            stamp = datetime.datetime.strptime(fields[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            samples.append((stamp, float(fields[1]), float(fields[2])))
    return samples


def sustained(fn: Callable[[], object], seconds: float = 3.0) -> str:
    """A table: after 2 s idle, do_bench's loop for `seconds`, by blocks of calls (five of
    20, then of 100): the op's median ms by events, and the SM clock and board power
    sampled in the block."""
    cache = flush_buffer()
    torch.cuda.synchronize()
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw",
                            "--format=csv,noheader,nounits", "-lms", "20"], stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    blocks, begin = [], time.time()
    while time.time() < begin + seconds:
        start_s = time.time()
        times = flushed_calls(fn, cache, 20 if len(blocks) < 5 else 100)
        blocks.append((start_s, time.time(), len(times), statistics.median(times)))
    time.sleep(0.1)
    smi.terminate()
    samples = smi_samples(smi)
    rows, calls = [], 0
    for t0, t1, n, ms in blocks:
        inside = [(mhz, watts) for t, mhz, watts in samples if t0 <= t < t1]
        mhz = f"{statistics.median(m for m, _ in inside):.0f}" if inside else "-"
        watts = f"{statistics.median(w for _, w in inside):.0f}" if inside else "-"
        rows.append((f"{calls + 1}-{calls + n}", f"{(t0 - begin) * 1e3:.0f}", f"{ms:.3f}", mhz, watts))
        calls += n
    idle = [mhz for t, mhz, _ in samples if begin - 1.0 <= t < begin]
    head = f"SM clock idle before the loop: {statistics.median(idle):.0f} MHz\n" if idle else ""
    return head + table(rows, ["calls", "ms from the start", "op ms (median)", "SM MHz", "board W"])


def main() -> None:
    from triton.testing import do_bench

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sustained", action="store_true",
                        help="only the op's time and the SM clock through 3 s of do_bench's loop")
    sustained_only = parser.parse_args().sustained
    torch.backends.cudnn.allow_tf32 = True
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}")
    for label, dtype, channels_last in FORMS:
        args = headline_args(dtype, channels_last)
        fn = lambda: OP(*args)  # noqa: E731
        fn()
        if sustained_only:
            print(f"{label}: do_bench's loop, sustained\n{sustained(fn)}")
            continue
        flushed = do_bench(fn, warmup=100, rep=600, return_mode="median")
        print(f"{label}: do_bench (L2 flushed) {flushed:.3f} ms")
        print(f"    back to back, profiled: {profiled_loop(fn)}")
        x, w, b = args[:3]
        for name, f in (("the op", fn), ("cuDNN's conv2d", lambda: F.conv2d(x, w, b))):
            times = [f"back to back {back_to_back_ms(f):.3f}"]
            times += [f"after {what} {after(f, before):.3f}" for what, before in befores().items()]
            print(f"    {name}, ms a call by events: " + ", ".join(times))
        print(f"    do_bench's loop, profiled: {flushed_loop(fn)}")
        print(f"    the same, the GPU asleep 2 ms after each call: {flushed_loop(fn, pause_ms=2.0)}")
        cache = flush_buffer()
        for name, load in (("back to back", fn), ("in do_bench's loop", lambda: (cache.zero_(), fn()))):
            mhz, watts, reasons = clock_under(lambda: [load() for _ in range(8)])
            print(f"    SM clock {name} {mhz:.0f} MHz, board {watts:.0f} W, clock-limit reasons {reasons}")
    mhz, watts, reasons = clock_under(lambda: time.sleep(0.01), 0.6)
    print(f"idle: SM clock {mhz:.0f} MHz, board {watts:.0f} W, clock-limit reasons {reasons}")


if __name__ == "__main__":
    main()
