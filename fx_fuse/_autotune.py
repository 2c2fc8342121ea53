"""The timed path choice: with ``torch.backends.cudnn.benchmark`` on, the op times the paths
that can run a call signature on its first call and keeps the fastest on the GPU, as cuDNN
times its algorithms under the same switch. The size rules (``_cuda._path``) decide
otherwise, and during CUDA graph capture (nothing may wait for the GPU there).

What is timed is the GPU's time per call, not the host's: the paths' host times differ
(cuDNN's is the longest), and where they decide, on the smallest layers, the rules already
weigh them (the direct kernel). Like cuDNN's benchmark mode, the choice is made on this
process's timings, so it can differ from one run to the next where paths are close: the
rules' path is kept unless another is at least ``MARGIN`` faster.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence

import torch

# how much faster (fraction of the rules' path's time) another path must be to replace it
MARGIN = 0.03
# timed rounds over the candidates (each candidate's best round counts), calls per round
ROUNDS, CALLS = 3, 3
# GPU clock cycles the GPU waits before each timed round (~1 ms) while the host queues the
# round's calls
QUEUE_CYCLES = 2_000_000


def enabled(device: torch.device) -> bool:
    """Whether the planner times the paths: cuDNN's benchmark mode is on and ``device``'s
    current stream is not being captured into a CUDA graph."""
    if not torch.backends.cudnn.benchmark:
        return False
    with torch.cuda.device(device):
        return not torch.cuda.is_current_stream_capturing()


def milliseconds(run: Callable[[], object], calls: int = CALLS) -> float:
    """GPU time per call of ``calls`` back-to-back calls of ``run`` on the current stream,
    between two CUDA events. The stream first waits ``QUEUE_CYCLES`` on the GPU, so that
    the host has queued the calls before the first event is reached: the window holds the
    calls' GPU time, not the host's time to issue them."""
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(QUEUE_CYCLES)
    start.record()
    for _ in range(calls):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


def times(
    candidates: Sequence[str], run: Callable[[str], object], device: torch.device
) -> Dict[str, float]:
    """Each candidate's best milliseconds per call of ``run(candidate)`` on ``device`` over
    ``ROUNDS`` rounds, the candidates taken in turn in every round (so that the GPU's clocks
    and the host's drift fall on all of them alike), after one warm-up call each (cuDNN's
    own search, the weights' preparation). A candidate whose warm-up runs out of GPU memory
    is left out, as cuDNN leaves out an algorithm whose workspace does not fit."""
    with torch.cuda.device(device):
        best = {path: math.inf for path in candidates if _warms_up(run, path)}
        for _ in range(ROUNDS):
            for path in best:
                best[path] = min(best[path], milliseconds(lambda path=path: run(path)))
    return best


def _warms_up(run: Callable[[str], object], path: str) -> bool:
    """Whether ``run(path)`` runs (a first call, untimed) without running out of GPU
    memory."""
    try:
        run(path)
    except torch.cuda.OutOfMemoryError:
        return False
    return True


def fastest(rule: str, measured: Dict[str, float]) -> str:
    """The path to keep: the fastest measured, where it beats the rules' path ``rule`` by
    at least ``MARGIN`` or ``rule`` was left out; else ``rule`` (also where every path was
    left out: its call then raises what it raises)."""
    if not measured:
        return rule
    best = min(measured, key=measured.__getitem__)
    if rule not in measured:
        return best
    return best if measured[best] < (1 - MARGIN) * measured[rule] else rule
