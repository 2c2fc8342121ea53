"""The timed path choice (``fx_fuse._autotune``): with ``torch.backends.cudnn.benchmark`` on,
the planner times every path that can run a call signature and keeps the fastest. The
planner's side runs here without a GPU (the timings injected); the timing itself, the
paths it runs and the plans it makes are checked on a GPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fx_fuse  # noqa: F401  (registers the op)
from fx_fuse import _autotune, _cuda, ops

OP = torch.ops.fx_fuse.conv2d_relu_add.default
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class _H100Properties:
    major, minor, multi_processor_count = 9, 0, 132


@pytest.fixture
def benchmark_mode(monkeypatch):
    """cuDNN's benchmark mode on, every path allowed; restored after the test."""
    for switch in ("FX_FUSE_DISABLE_PATCH", "FX_FUSE_DISABLE_CUDNN", "FX_FUSE_DISABLE_WGMMA"):
        monkeypatch.delenv(switch, raising=False)
    with torch.backends.cudnn.flags(enabled=True, benchmark=True):
        yield


@pytest.fixture
def h100_timings(benchmark_mode, monkeypatch):
    """The planner as on an H100 (meta tensors; the binding takes every input), its timings
    set by the test: ``timings.update(path=ms)``; the calls to ``times`` are recorded."""
    monkeypatch.setattr(_cuda, "_device_properties", lambda device: _H100Properties)
    monkeypatch.setattr(_cuda, "_patch_runs", lambda *args: True)
    monkeypatch.setattr(_cuda, "_direct_runs", lambda *args: True)
    monkeypatch.setattr(_cuda, "_depthwise_runs", lambda *args: True)
    monkeypatch.setattr(_autotune, "enabled", lambda device: torch.backends.cudnn.benchmark)
    timings, asked = {}, []

    def times(candidates, run, device):
        asked.append(list(candidates))
        return {path: timings[path] for path in candidates}

    monkeypatch.setattr(_autotune, "times", times)
    return timings, asked


def _plan(x_shape, cout, k, padding=0, groups=1, dtype=torch.float32):
    x = torch.empty(x_shape, dtype=dtype, device="meta")
    w = torch.empty(cout, x_shape[1] // groups, k, k, dtype=dtype, device="meta")
    b = torch.empty(cout, dtype=dtype, device="meta")
    args = (x, w, b, ops.scalar_other(0.5), [1, 1], [padding] * 2, [1, 1], groups)
    return _cuda.plan(*args)


HEADLINE = ((128, 64, 128, 128), 128, 3)  # the rules: the patch kernel


def test_fastest_needs_the_margin_to_replace_the_rules_path():
    edge = 1.0 - _autotune.MARGIN
    assert _autotune.fastest("patch", {"patch": 1.0, "fused": 0.5, "cudnn": 0.7}) == "fused"
    assert _autotune.fastest("patch", {"patch": 1.0, "fused": edge + 0.01, "cudnn": 1.2}) == "patch"
    assert _autotune.fastest("cudnn", {"fused": 1.3, "cudnn": 1.0}) == "cudnn"
    assert _autotune.fastest("fused", {"fused": 1.0, "cudnn": edge * 0.999}) == "cudnn"
    assert _autotune.fastest("fused", {"fused": 1.0, "cudnn": edge * 1.001}) == "fused"


def test_fastest_where_paths_were_left_out():
    assert _autotune.fastest("patch", {"fused": 2.0, "cudnn": 1.0}) == "cudnn"
    assert _autotune.fastest("patch", {}) == "patch"


def test_benchmark_mode_times_every_path_that_runs_the_layer(h100_timings):
    timings, asked = h100_timings
    timings.update(patch=1.15, fused=1.9, cudnn=2.4)
    assert _plan(*HEADLINE) == ("patch", False, False, True)
    timings.update(fused=1.0)  # a layer where the rules would be wrong
    assert _plan(*HEADLINE) == ("fused", False, False, True)
    assert asked == [["fused", "patch", "cudnn"]] * 2


def test_exact_fp32_past_the_3xtf32_bound_is_not_timed_on_the_tensor_cores(h100_timings):
    timings, asked = h100_timings
    timings.update(patch=1.0, fused=1.0, cudnn=3.0)
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=False):
        assert _plan((32, 512, 28, 28), 128, 3, padding=1)[0] == "patch"  # K = 4608
        assert _plan((32, 576, 28, 28), 128, 3, padding=1)[0] == "cudnn"  # K = 5184
    # one candidate past the bound: nothing timed
    assert asked == [["fused", "patch", "cudnn"]]


def test_the_rules_decide_without_benchmark_mode(h100_timings):
    timings, asked = h100_timings
    timings.update(patch=9.0, fused=1.0, cudnn=1.0)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False):
        assert _plan(*HEADLINE)[0] == "patch"
    assert asked == []


def test_the_candidates_follow_the_switches_and_the_binding(h100_timings, monkeypatch):
    timings, asked = h100_timings
    timings.update(patch=1.0, fused=1.0, cudnn=1.0, direct=1.0, depthwise=1.0)
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
    _plan(*HEADLINE)
    monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")
    _plan(*HEADLINE)  # one candidate left: nothing to time
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN")
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH")
    _plan((1, 16, 16, 16), 16, 3, padding=1)  # the direct kernel's size
    _plan((32, 144, 56, 56), 144, 3, padding=1, groups=144)
    monkeypatch.setattr(_cuda, "_depthwise_runs", lambda *args: False)
    assert _plan((32, 144, 56, 56), 144, 3, padding=1, groups=144)[0] == "cudnn"
    assert asked == [
        ["fused", "patch"],
        ["fused", "patch", "cudnn", "direct"],
        ["depthwise", "cudnn"],
    ]


# On the GPU


def _path_of(kernels: str) -> str:
    """Which path launched ``kernels`` (the profiler's names, joined)."""
    if "direct_conv" in kernels:
        return "direct"
    if "depthwise" in kernels:
        return "depthwise"
    if "conv_epilogue" in kernels or "transpose_kernel" in kernels:  # NCHW or NHWC data
        return "cudnn"
    return "patch" if "patch_kernel" in kernels else "fused"


def _kernels_run(fn) -> str:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " ".join(e.key for e in prof.key_averages() if e.device_time_total > 0)


def _layer(x_shape, cout, k, padding, groups=1):
    torch.manual_seed(0)
    x = torch.rand(x_shape, device="cuda")
    w = torch.randn(cout, x_shape[1] // groups, k, k, device="cuda") / math.sqrt(
        x_shape[1] // groups * k * k
    )
    b, other = torch.randn(cout, device="cuda"), torch.randn(cout, 1, 1, device="cuda")
    return x, w, b, other, [1, 1], [padding] * 2, [1, 1], groups


def _reference(x, w, b, other, stride, padding, dilation, groups):
    return torch.relu(F.conv2d(x.double(), w.double(), b.double(), stride, padding, dilation,
                               groups)) + other.double()


@pytest.fixture
def recorded_times(monkeypatch):
    """The planner's timings, recorded: a list of (rule's path, {path: ms}, path kept)."""
    records = []
    fastest = _autotune.fastest

    def record(rule, measured):
        kept = fastest(rule, measured)
        records.append((rule, measured, kept))
        return kept

    monkeypatch.setattr(_autotune, "fastest", record)
    _cuda.forget_plans()
    yield records
    _cuda.forget_plans()


@gpu
@pytest.mark.parametrize(
    "layer",
    [
        ((8, 64, 32, 32), 128, 3, 1, 1),  # K-table, patch and cuDNN paths
        ((8, 32, 28, 28), 32, 3, 1, 32),  # depthwise and cuDNN paths
        ((1, 16, 16, 16), 16, 3, 1, 1),  # the direct kernel's size
    ],
    ids=["dense", "depthwise", "small"],
)
def test_benchmark_mode_runs_the_path_it_timed_fastest(benchmark_mode, recorded_times, layer):
    """Every path that can run the layer is timed, once per signature; the path kept is
    the one that runs afterwards, and its result is right."""
    args = _layer(*layer)
    out = OP(*args)
    assert len(recorded_times) == 1, recorded_times
    rule, measured, kept = recorded_times[0]
    assert len(measured) >= 2 and all(0 < ms < math.inf for ms in measured.values()), measured
    assert rule in measured
    assert _path_of(_kernels_run(lambda: OP(*args))) == kept
    assert len(recorded_times) == 1  # timed once per signature
    torch.testing.assert_close(out.double(), _reference(*args), atol=2e-2, rtol=1e-2)


@gpu
def test_a_path_out_of_memory_is_left_out():
    """A candidate whose first call runs out of GPU memory is not timed; the others are."""
    x = torch.ones(1024, device="cuda")

    def run(path):
        if path == "patch":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test)")
        return x * 2

    measured = _autotune.times(["fused", "patch", "cudnn"], run, x.device)
    assert sorted(measured) == ["cudnn", "fused"]
    assert all(0 < ms < math.inf for ms in measured.values()), measured


@gpu
def test_benchmark_mode_plans_apart_from_the_rules(benchmark_mode, recorded_times, monkeypatch):
    """A signature planned in benchmark mode is planned again with it off (by the rules,
    untimed): the switch is part of the call signature; each plan is remembered."""
    plans = []
    plan = _cuda.plan
    monkeypatch.setattr(_cuda, "plan", lambda *args: plans.append(1) or plan(*args))
    args = _layer((8, 64, 32, 32), 128, 3, 1)
    for _ in range(2):
        OP(*args)
        with torch.backends.cudnn.flags(enabled=True, benchmark=False):
            OP(*args)
    assert len(plans) == 2 and len(recorded_times) == 1


@gpu
def test_no_timing_while_a_cuda_graph_is_captured(benchmark_mode, recorded_times, monkeypatch):
    """A signature first seen during capture is planned by the rules (nothing may wait for
    the GPU there); the graph replays the right result."""
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")  # cuDNN's own search is not captured
    OP(*_layer((2, 64, 32, 32), 128, 3, 1))  # the extension loaded before capture
    recorded_times.clear()
    args = _layer((8, 64, 32, 32), 128, 3, 1)
    x = args[0]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = OP(*args)
    assert recorded_times == []
    x.copy_(torch.rand_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.double(), _reference(*args), atol=2e-2, rtol=1e-2)
