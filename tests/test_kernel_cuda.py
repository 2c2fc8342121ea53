"""GPU tests of the fused CUDA kernel behind ``fx_fuse::conv2d_relu_add``.

Every result is compared with a float64 reference computed from the same (fresh, random)
inputs; the output memory is poisoned with NaN before each call so that an element the
kernel does not write shows up. Skipped without CUDA.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import fx_fuse  # noqa: F401  (registers the op)
from fx_fuse import _build, _cuda, ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OP = torch.ops.fx_fuse.conv2d_relu_add.default
DEV = "cuda"

# (name, dtype, allow_tf32) -> (max ||out - ref|| / ||ref||, atol / max|ref|, rtol)
POLICIES = {
    "tf32": (torch.float32, True, (3e-3, 5e-3, 1e-2)),
    "fp32": (torch.float32, False, (5e-5, 5e-5, 1e-4)),  # K up to ~4700: fp32 accumulation
    "fp16": (torch.float16, True, (2e-3, 4e-3, 1e-2)),
    "bf16": (torch.bfloat16, True, (1e-2, 3e-2, 5e-2)),
}

# (N, C, H, W, Cout, KH, KW, stride, padding, dilation)
CONFIGS = [
    (2, 3, 9, 11, 7, 3, 3, 1, 0, 1),
    (1, 1, 5, 5, 1, 3, 3, 1, 1, 1),
    (2, 5, 7, 7, 16, 3, 3, 2, 1, 1),
    (3, 16, 12, 10, 32, 1, 1, 1, 0, 1),
    (2, 8, 13, 17, 130, 3, 5, (2, 1), (1, 2), (2, 1)),
    (1, 64, 14, 14, 64, 3, 3, 1, 1, 1),
    (2, 3, 23, 23, 24, 7, 7, 2, 3, 1),
    (1, 4, 3, 3, 5, 3, 3, 1, 0, 1),
    (2, 32, 9, 9, 48, 3, 3, 1, 2, 2),
    (1, 12, 6, 40, 20, 2, 4, (1, 3), (0, 1), (1, 2)),
    (5, 40, 8, 8, 200, 3, 3, 1, 1, 1),
    (1, 24, 30, 30, 70, 3, 3, 3, 0, 1),
    (4, 128, 6, 6, 256, 3, 3, 1, 1, 1),
    (1, 520, 5, 5, 130, 3, 3, 1, 1, 1),  # K > 4096: 128x64 tiles, K-table in global memory
    (1, 3, 4, 4, 5, 3, 3, 1, 3, 1),  # padding wider than the kernel: all-padding windows
    (2, 4, 10, 10, 6, 2, 2, 3, 0, 1),  # stride larger than the kernel
    (1, 2, 7, 7, 3, 3, 3, 1, 0, 3),  # dilated kernel as large as the image
]


@pytest.fixture(autouse=True, params=["wgmma", "ktable", "mma_sync", "cudnn", "direct"])
def kernel_path(request, monkeypatch):
    """Every test runs on each implementation: on Hopper the patch kernel where it applies
    and the K-table wgmma kernel elsewhere; the K-table wgmma kernel everywhere; the
    portable mma.sync kernel; the cuDNN path (cuDNN's convolution and the epilogue pass)
    wherever the patch kernel does not run; the direct kernel wherever it takes the sizes.
    The size rules would send most of these small shapes to the direct kernel or the cuDNN
    path: the first four turn the direct kernel off, the first three the cuDNN path."""
    monkeypatch.delenv("FX_FUSE_DISABLE_WGMMA", raising=False)
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: request.param == "direct")
    if request.param == "ktable":
        monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")
    elif request.param == "mma_sync":
        monkeypatch.setenv("FX_FUSE_DISABLE_WGMMA", "1")
    elif request.param == "cudnn":
        monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN")
        monkeypatch.setattr(_cuda, "_cudnn_pays", lambda *args: True)
    _cuda.forget_plans()  # plans made under another test's rules
    return request.param


@pytest.fixture(autouse=True)
def _restore_tf32_flags():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def poison(numel: int, dtype: torch.dtype) -> None:
    """Fill the caching allocator's free memory of that size with NaN, so that an output
    allocated next starts as NaN."""
    for _ in range(2):
        junk = torch.full((numel,), float("nan"), dtype=dtype, device=DEV)
        del junk


def reference64(x, w, b, other, stride, padding, dilation, groups=1):
    conv = F.conv2d(
        x.double(), w.double(), None if b is None else b.double(), stride, padding, dilation,
        groups,
    )
    o = other.double() if isinstance(other, torch.Tensor) else other
    if isinstance(o, torch.Tensor) and o.device.type == "cpu":
        o = o.item()
    return torch.relu(conv) + o


def make(cfg, dtype, layout="nchw", seed=None):
    n, c, h, w, cout, kh, kw, stride, padding, dilation = cfg
    x = torch.randn(n, c, h, w, device=DEV).to(dtype)
    wt = (torch.randn(cout, c, kh, kw, device=DEV) / math.sqrt(c * kh * kw)).to(dtype)
    b = torch.randn(cout, device=DEV).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
    return x, wt, b, _pair(stride), _pair(padding), _pair(dilation)


def run_op(x, w, b, other, stride, padding, dilation, groups=1):
    shape = ops.output_shape(x, w, stride, padding, dilation)
    poison(math.prod(shape) + 4096, x.dtype)
    out = OP(x, w, b, other, stride, padding, dilation, groups)
    torch.cuda.synchronize()
    return out


def rounding_scale64(x, w, stride, padding, dilation, groups=1):
    """Per output element, the size of the error that rounding its products makes: the root
    of the sum of the squared products. An output of a few elements whose sums cancel would
    otherwise be held to an error relative to a result near zero."""
    return F.conv2d(x.double() ** 2, w.double() ** 2, None, stride, padding, dilation, groups).sqrt()


def assert_close64(out, ref, policy, scale=None):
    """``out`` against the float64 ``ref``: the error's norm relative to the result's (or to
    the norm of ``scale``, the rounding scale, where that is larger), and element-wise."""
    rel_tol, atol_scale, rtol = POLICIES[policy][2]
    out64 = out.double()
    assert not torch.isnan(out64).any(), "NaN in the output (unwritten or wrong elements)"
    norm, largest = ref.norm().item(), ref.abs().max().item()
    if scale is not None:
        norm, largest = max(norm, scale.norm().item()), max(largest, scale.max().item())
    rel = (out64 - ref).norm().item() / max(norm, 1e-30)
    assert rel < rel_tol, f"relative error {rel:.3e} >= {rel_tol:.1e} ({policy})"
    torch.testing.assert_close(out64, ref, atol=atol_scale * (largest or 1.0), rtol=rtol)


def set_policy(policy):
    dtype, tf32, _ = POLICIES[policy]
    torch.backends.cudnn.allow_tf32 = tf32
    return dtype


def expected_format(x, w):
    return ops.output_memory_format(x, w)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "x".join(map(str, c[:7])))
def test_matches_float64_reference(cfg, policy, layout):
    dtype = set_policy(policy)
    x, w, b, stride, padding, dilation = make(cfg, dtype, layout)
    cout = w.shape[0]
    other = torch.randn(cout, 1, 1, device=DEV).to(dtype)
    out = run_op(x, w, b, other, stride, padding, dilation)
    ref = reference64(x, w, b, other, stride, padding, dilation)
    assert out.shape == ref.shape and out.dtype == dtype
    assert out.is_contiguous(memory_format=expected_format(x, w))
    assert_close64(out, ref, policy, rounding_scale64(x, w, stride, padding, dilation))


def patch_kernel_name(layout):
    """What ``kernel_name`` calls the patch kernel for an input layout."""
    return "patch channels-last" if layout == "cl" else "patch"


# Shapes for the patch kernel (Hopper), and whether it takes them: NCHW fp32, NCHW 16-bit
# (whose patch rows are wider: 16-byte chunks of 8 elements), channels-last.
PATCH_CONFIGS = [
    ((2, 64, 20, 32, 128, 3, 3, 1, 1, 1), True, True, True),  # padding on every side, 8 rows per tile
    ((1, 48, 17, 136, 200, 3, 3, 1, 0, 1), True, True, True),  # 2 column tiles, partial channel block, 2 channel tiles
    ((2, 32, 24, 40, 96, 3, 3, 1, 2, 2), True, True, True),  # dilation (narrower tiles where wider ones do not fit)
    ((1, 40, 9, 16, 70, 3, 5, 1, (1, 2), 1), True, True, False),  # 3x5 kernel, uneven padding
    # the same with 72 channels: channels-last output rows in 16-byte multiples (the copy
    # engine writes the channels-last patch kernel's output)
    ((1, 40, 9, 16, 72, 3, 5, 1, (1, 2), 1), True, True, True),
    ((3, 72, 7, 8, 64, 3, 3, 1, 1, 1), True, False, True),  # 8-pixel rows: 32 rows per tile
    ((1, 32, 8, 32, 40, 5, 5, 1, 2, 1), True, True, True),  # 25 taps
    ((16, 32, 66, 64, 128, 3, 3, 1, 0, 1), True, True, True),  # more tiles than SMs
    ((16, 32, 66, 64, 48, 3, 3, 1, 0, 1), True, True, True),  # the same on 64-channel tiles
    # three or more tiles per CTA (132 SMs), each of whole output rows (16-bit: its output
    # leaves through the copy engine, written out while the next tile multiplies)
    ((16, 32, 132, 64, 128, 3, 3, 1, 1, 1), True, True, True),
    ((2, 32, 12, 16, 128, 3, 4, 1, 1, 1), True, True, True),  # odd output width (15)
    # the same, two or more whole-row tiles per CTA (the copy engine writes the runs, fp32
    # its first 64 channels): 31 columns, a second channel tile of 8 channels
    ((16, 32, 66, 32, 136, 3, 4, 1, 1, 1), True, True, True),
    # the same with one channel tile of 120 and of 104 channels (16-bit: the tile's last
    # staged channels partly, or wholly, past Cout)
    ((16, 32, 66, 32, 120, 3, 4, 1, 1, 1), True, True, True),
    ((16, 32, 66, 32, 104, 3, 4, 1, 1, 1), True, True, True),
    ((2, 64, 11, 16, 64, 3, 3, 2, 1, 1), False, False, False),  # strided: the patch does not fit
    # 128-column tiles: 104 columns (a second 64-column half of 40), 75 channels (a channel
    # pair across Cout), 7 rows (a tile's second row outside the output)
    ((2, 32, 7, 104, 75, 3, 3, 1, 1, 1), True, True, False),
    ((2, 32, 10, 108, 72, 3, 3, 1, 0, 1), True, False, True),  # 106 columns: rows off 16-byte boundaries
    ((1, 32, 6, 168, 128, 3, 3, 1, 1, 1), True, True, True),  # 2 column tiles, one half empty
]


@pytest.mark.parametrize("other_kind", ["c11", "full_nchw"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("policy", ["tf32", "fp32", "fp16", "bf16"])
@pytest.mark.parametrize(
    "cfg,takes32,takes16,takes_cl",
    PATCH_CONFIGS,
    ids=lambda c: "x".join(map(str, c[:7])) if isinstance(c, tuple) else "",
)
def test_patch_kernel_matches_float64_reference(
    cfg, takes32, takes16, takes_cl, policy, layout, other_kind, monkeypatch
):
    # these shapes are below the size rule that picks the patch kernel: bypass it
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    dtype = set_policy(policy)
    x, w, b, stride, padding, dilation = make(cfg, dtype, layout)
    hopper = _cuda._use_wgmma(x.device)
    patch = _cuda._patch_enabled()
    name = _build.load().kernel_name(x, w, stride, padding, dilation, True, hopper, patch)
    takes = takes_cl if layout == "cl" else takes32 if dtype == torch.float32 else takes16
    expected = patch_kernel_name(layout) if hopper and patch and takes else None
    assert name == expected or (expected is None and not name.startswith("patch")), name
    shape = ops.output_shape(x, w, stride, padding, dilation)
    other = _others(shape, dtype)[other_kind]
    out = run_op(x, w, b, other, stride, padding, dilation)
    ref = reference64(x, w, b, other, stride, padding, dilation)
    assert out.is_contiguous(memory_format=expected_format(x, w))
    assert_close64(out, ref, policy)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_patch_kernel_3xtf32_with_inf_and_nan(layout, monkeypatch):
    """Exact fp32 (3xTF32) on the patch kernel where weights and inputs hold Inf and NaN:
    NaN and Inf where exact arithmetic puts them, and the finite outputs as accurate as
    elsewhere (the kernel then also copies the weights' finite big parts)."""
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    dtype = set_policy("fp32")
    x, w, b, stride, padding, dilation = make((2, 32, 10, 40, 128, 3, 3, 1, 0, 1), dtype, layout)
    w[5, 3, 1, 2] = float("inf")  # channel 5: +-Inf at every pixel, by the sign of x there
    w[9, 0, 0, 0] = float("-inf")
    w[9, 1, 0, 0] = float("inf")  # channel 9: Inf - Inf where the two inputs share a sign
    w[20, 2, 2, 2] = float("nan")  # channel 20: NaN everywhere
    x[1, 4, 5, 7] = float("nan")
    x[0, 6, 2, 30] = float("inf")
    other = torch.randn(128, 1, 1, device=DEV)
    out = run_op(x, w, b, other, stride, padding, dilation)
    # the reference on the CPU in float64: products and sums as exact arithmetic has them
    ref = reference64(x.cpu(), w.cpu(), b.cpu(), 0.0, stride, padding, dilation)
    ref += other.cpu().double()
    out = out.cpu().double()
    assert torch.isnan(ref[:, 20]).all() and torch.isinf(ref[:, 5]).any()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(torch.isinf(out), torch.isinf(ref))
    assert torch.equal(out[torch.isinf(out)], ref[torch.isinf(ref)])
    finite = torch.isfinite(ref)
    _, atol_scale, rtol = POLICIES["fp32"][2]
    torch.testing.assert_close(
        out[finite], ref[finite], atol=atol_scale * ref[finite].abs().max().item(), rtol=rtol
    )


def _others(cfg_out_shape, dtype):
    n, c, oh, ow = cfg_out_shape
    return {
        "full_nchw": torch.randn(n, c, oh, ow, device=DEV).to(dtype),
        "full_cl": torch.randn(n, c, oh, ow, device=DEV)
        .to(dtype)
        .contiguous(memory_format=torch.channels_last),
        "full_noncontig": torch.randn(n, c, ow, oh, device=DEV).to(dtype).transpose(2, 3),
        "c11": torch.randn(c, 1, 1, device=DEV).to(dtype),
        "1c11": torch.randn(1, c, 1, 1, device=DEV).to(dtype),
        "111w": torch.randn(1, 1, 1, ow, device=DEV).to(dtype),
        "1h1": torch.randn(oh, 1, device=DEV).to(dtype),
        "n111": torch.randn(n, 1, 1, 1, device=DEV).to(dtype),
        "chw": torch.randn(c, oh, ow, device=DEV).to(dtype),
        "0dim_cuda": torch.randn((), device=DEV).to(dtype),
        "0dim_cuda_f64": torch.randn((), device=DEV, dtype=torch.float64),
        "0dim_cpu_f64": ops.scalar_other(0.7),
        "0dim_cpu_int": torch.tensor(3),
        "int_c11": torch.randint(-3, 4, (c, 1, 1), device=DEV, dtype=torch.int32),
        "fp16_full": torch.randn(n, c, oh, ow, device=DEV).half(),
        "bf16_c11": torch.randn(c, 1, 1, device=DEV).bfloat16(),
    }


OTHER_KINDS = [
    "full_nchw", "full_cl", "full_noncontig", "c11", "1c11", "111w", "1h1", "n111", "chw",
    "0dim_cuda", "0dim_cuda_f64", "0dim_cpu_f64", "0dim_cpu_int", "int_c11", "fp16_full",
    "bf16_c11",
]


@pytest.mark.parametrize("policy", ["tf32", "fp16"])
@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize(
    "cfg,layout",
    [
        ((2, 6, 11, 9, 10, 3, 3, 1, 1, 1), "nchw"),
        # 8 x 8 outputs of 16 channels: whole 16-byte groups per channel plane and per pixel
        # (the cuDNN path's 16-byte epilogue where `other` is per channel or a number)
        ((2, 8, 8, 8, 16, 3, 3, 1, 1, 1), "nchw"),
        ((2, 8, 8, 8, 16, 3, 3, 1, 1, 1), "cl"),
    ],
    ids=["odd", "groups_nchw", "groups_cl"],
)
def test_every_kind_of_other(kind, policy, cfg, layout):
    dtype = set_policy(policy)
    assert_other_kind_matches(make(cfg, dtype, layout), kind, dtype, policy)


def assert_other_kind_matches(args, kind, dtype, policy):
    """The op on ``args`` (from ``make``) with `other` of that kind, against float64."""
    x, w, b, stride, padding, dilation = args
    shape = ops.output_shape(x, w, stride, padding, dilation)
    other = _others(shape, dtype)[kind]
    if dtype == torch.float16 and kind in ("fp16_full", "bf16_c11"):
        other = other.to(dtype)  # a bf16 tensor would promote an fp16 result to fp32
    out = run_op(x, w, b, other, stride, padding, dilation)
    ref = reference64(x, w, b, other, stride, padding, dilation)
    assert out.dtype == dtype
    assert_close64(out, ref, policy)


# The patch kernel's epilogue with every kind of `other` (the shapes above use two), on
# output rows of an odd and an even width; channels-last output goes through shared
# memory and the copy engine (tiles of 16 and 32 columns: boxes of several rows; 72
# channels: a partial channel tile).
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("policy", ["tf32", "fp16"])
@pytest.mark.parametrize("kind", OTHER_KINDS)
@pytest.mark.parametrize(
    "cfg", [(2, 32, 12, 16, 128, 3, 4, 1, 1, 1), (1, 64, 6, 24, 72, 3, 3, 1, 0, 1)],
    ids=["width15", "width22"],
)
def test_every_kind_of_other_on_the_patch_kernel(cfg, kind, policy, layout, monkeypatch):
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    dtype = set_policy(policy)
    args = make(cfg, dtype, layout)
    x, w, _, stride, padding, dilation = args
    hopper, patch = _cuda._use_wgmma(x.device), _cuda._patch_enabled()
    name = _build.load().kernel_name(x, w, stride, padding, dilation, True, hopper, patch)
    assert name == patch_kernel_name(layout) or not (hopper and patch), name
    assert_other_kind_matches(args, kind, dtype, policy)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_patch_kernel_writes_a_strided_out(layout):
    """An `out` given to the binding with padded strides (NCHW rows of 105 columns for 104;
    channels-last pixels of 73 channels for 72, which the copy engine cannot write): the
    result in the view, and nothing written outside it. NCHW stays on the patch kernel
    (its stores follow the strides); channels-last leaves it for another kernel."""
    set_policy("tf32")
    x, w, b, stride, padding, dilation = make((2, 32, 7, 104, 72, 3, 3, 1, 1, 1), torch.float32, layout)
    n, cout, oh, ow = ops.output_shape(x, w, stride, padding, dilation)
    hopper, patch = _cuda._use_wgmma(x.device), _cuda._patch_enabled()
    ext = _build.load()
    name = ext.kernel_name(x, w, stride, padding, dilation, True, hopper, patch)
    assert name == patch_kernel_name(layout) or not (hopper and patch), name
    if layout == "nchw":
        base = torch.full((n, cout, oh, ow + 1), float("nan"), device=DEV)
        out, pad = base[..., :ow], base[..., ow:]
    else:
        base = torch.full((n, oh, ow, cout + 1), float("nan"), device=DEV)
        out, pad = base[..., :cout].permute(0, 3, 1, 2), base[..., cout:]
    other = torch.randn(cout, 1, 1, device=DEV)
    ext.conv2d_relu_add_out(
        x, w, b, other.expand(out.shape), 0.0, stride, padding, dilation, True, hopper, patch, out
    )
    torch.cuda.synchronize()
    assert_close64(out, reference64(x, w, b, other, stride, padding, dilation), "tf32")
    assert torch.isnan(pad).all()


def _kernels_run(fn) -> str:
    """The names of the CUDA kernels ``fn`` launches, joined."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return " ".join(e.key for e in prof.key_averages() if e.device_time_total > 0)


def test_cudnn_path_runs_where_its_rule_says(monkeypatch):
    """The cuDNN path (cuDNN's convolution, then the epilogue pass) is what runs when its
    rule picks it (the kernel tests above rely on that), the fused kernel when
    FX_FUSE_DISABLE_CUDNN=1; both give the same result."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)  # it takes these sizes
    set_policy("tf32")
    monkeypatch.setattr(_cuda, "_cudnn_pays", lambda *args: True)
    x, w, b, stride, padding, dilation = make((2, 16, 12, 12, 24, 3, 3, 1, 1, 1), torch.float32)
    other = torch.randn(24, 1, 1, device=DEV)
    ref = reference64(x, w, b, other, stride, padding, dilation)
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    assert_close64(run_op(x, w, b, other, stride, padding, dilation), ref, "tf32")
    kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, padding, dilation))
    assert "conv_epilogue" in kernels and "conv_relu_add" not in kernels, kernels
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
    assert_close64(run_op(x, w, b, other, stride, padding, dilation), ref, "tf32")
    kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, padding, dilation))
    assert "conv_epilogue" not in kernels and "conv_relu_add" in kernels, kernels


@pytest.mark.parametrize(
    "policy,cin,padding,many,staged",
    [
        ("bf16", 64, 0, True, True),  # one channel block
        ("fp16", 64, 0, True, True),
        ("bf16", 128, 0, True, False),  # two channel blocks: stored directly
        ("bf16", 64, 0, False, False),  # fewer than two tiles per CTA
        ("tf32", 64, 0, True, True),  # 30-pixel rows (not whole 32-byte sectors), 2 blocks
        ("tf32", 128, 0, True, True),
        ("tf32", 64, 1, True, False),  # 32-pixel rows: stored directly
        ("tf32", 64, 0, False, False),
        ("fp32", 64, 0, True, False),  # 3xTF32: stored directly
    ],
)
def test_staged_rows_kernel_runs_where_its_rule_says(
    policy, cin, padding, many, staged, monkeypatch
):
    """NCHW tiles of 128 channels that span whole output rows leave through the copy engine
    (the patch kernel's ROWS instantiation, last template argument ``true``) where the
    rule (binding.cpp, stage_rows_pays) says so, and the result is right either way."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)  # it takes these sizes
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    dtype = set_policy(policy)
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    # 8 tiles (of 8 rows of 32 columns) per image: 4 per SM, or 16 in all
    n = sms // 2 if many else 2
    x, w, b, stride, pad, dilation = make((n, cin, 66, 32, 128, 3, 3, 1, padding, 1), dtype)
    if not (_cuda._use_wgmma(x.device) and _cuda._patch_enabled()):
        pytest.skip("the patch kernel does not run here (not Hopper, or off on this kernel path)")
    other = torch.randn(128, 1, 1, device=DEV, dtype=dtype)
    kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, pad, dilation))
    assert _patch_instance(kernels)["rows"] == staged
    out = run_op(x, w, b, other, stride, pad, dilation)
    assert_close64(out, reference64(x, w, b, other, stride, pad, dilation), policy)


@pytest.mark.parametrize("policy", ["bf16", "fp16"])
@pytest.mark.parametrize(
    "cfg,tiles_per_image",
    [
        ((1, 64, 10, 128, 128, 3, 3, 1, 0, 1), 4),  # 144-column patches: one tensor copy
        ((1, 64, 6, 256, 128, 1, 3, 1, 0, 65), 3),  # 272 columns, wider than a box: per row
        # 14-pixel rows, 490-pixel planes: runs start 0, 4, 8 or 12 bytes into a 16-byte chunk
        ((1, 64, 37, 16, 128, 3, 3, 1, 0, 1), 3),
        # 13-pixel rows (a 1x4 kernel): a one-row run starting 2 or 4 bytes into a chunk
        # has no 16-byte interior
        ((1, 64, 33, 16, 128, 1, 4, 1, 0, 1), 3),
    ],
    ids=["box", "wider than a box", "run offsets", "run without interior"],
)
def test_staged_rows_16bit_patch_copies(policy, cfg, tiles_per_image, monkeypatch):
    """16-bit NCHW patches of the staged-rows kernel land as dense channel rows (by one
    tensor copy, or by one bulk copy per row where wider than a box) and are interleaved
    into the consumers' pitch; each channel's run of output rows goes out as one bulk copy
    of its 16-byte aligned interior and the pixels around it: the result is right in
    every case."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    dtype = set_policy(policy)
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    n = -(-2 * sms // tiles_per_image)  # two tiles per CTA: staged rows pay (binding.cpp)
    x, w, b, stride, pad, dilation = make((n, *cfg[1:]), dtype)
    if not (_cuda._use_wgmma(x.device) and _cuda._patch_enabled()):
        pytest.skip("the patch kernel does not run here (not Hopper, or off on this kernel path)")
    other = torch.randn(128, 1, 1, device=DEV, dtype=dtype)
    kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, pad, dilation))
    assert _patch_instance(kernels)["rows"]
    out = run_op(x, w, b, other, stride, pad, dilation)
    assert_close64(out, reference64(x, w, b, other, stride, pad, dilation), policy)


@pytest.mark.parametrize(
    "policy,layout,cfg,planes",
    [
        ("tf32", "nchw", (2, 64, 20, 136, 128, 3, 3, 1, 0, 1), True),  # 128-pixel tiles, 2 per row
        ("tf32", "nchw", (4, 32, 30, 64, 160, 3, 3, 1, 1, 1), True),  # 64-pixel tiles, 2 channel tiles
        ("tf32", "nchw", (2, 40, 24, 40, 96, 3, 3, 1, 2, 2), True),  # dilation 2, a partial block
        ("tf32", "nchw", (32, 64, 66, 128, 128, 3, 3, 1, 0, 1), True),  # staged rows (126 pixels)
        # the widest patch rows: 272 columns (1x3, dilation 70 along W)
        ("tf32", "nchw", (2, 16, 6, 268, 128, 1, 3, 1, 0, 70), True),
        # staged rows wider than a tensor copy's box (264 columns): bulk copies per row
        ("tf32", "nchw", (2, 16, 6, 256, 128, 1, 3, 1, 0, 65), True),
        ("tf32", "nchw", (2, 64, 20, 136, 64, 3, 3, 1, 0, 1), False),  # 64-channel tiles
        ("tf32", "nchw", (2, 64, 34, 32, 128, 3, 3, 1, 1, 1), False),  # 32-pixel tiles
        ("fp32", "nchw", (2, 64, 20, 136, 128, 3, 3, 1, 0, 1), False),  # 3xTF32
        ("bf16", "nchw", (2, 64, 20, 136, 128, 3, 3, 1, 0, 1), False),
        ("tf32", "cl", (2, 64, 20, 136, 128, 3, 3, 1, 0, 1), False),  # channels-last input
    ],
    ids=lambda c: "x".join(map(str, c[:9])) if isinstance(c, tuple) else str(c),
)
def test_planes_kernel_runs_where_its_rule_says(policy, layout, cfg, planes, monkeypatch):
    """TF32 NCHW tiles of 128 channels whose m-halves lie in one output row (tile_w >= 64)
    and read the input at stride 1 along W run the patch kernel whose wgmmas read A from
    the transposed patch (PLANES, last template argument ``true``; params.h,
    patch_planes), and the result is right either way."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    dtype = set_policy(policy)
    x, w, b, stride, pad, dilation = make(cfg, dtype, layout)
    if not (_cuda._use_wgmma(x.device) and _cuda._patch_enabled()):
        pytest.skip("the patch kernel does not run here (not Hopper, or off on this kernel path)")
    shape = ops.output_shape(x, w, stride, pad, dilation)
    other = torch.randn(shape[1:], device=DEV, dtype=dtype)
    kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, pad, dilation))
    assert _patch_instance(kernels)["planes"] == planes
    out = run_op(x, w, b, other, stride, pad, dilation)
    assert out.is_contiguous(memory_format=expected_format(x, w))
    assert_close64(out, reference64(x, w, b, other, stride, pad, dilation), policy)


def _patch_instance(kernels: str) -> dict:
    """The template arguments of the one patch kernel among ``kernels`` (the profiler's
    names): whether it stages its output rows and reads A from the transposed patch."""
    patch = re.findall(r"conv_relu_add_patch_kernel<([^>]*)>", kernels)
    assert len(patch) == 1, kernels
    args = [a.strip() for a in patch[0].split(",")]
    assert len(args) == 5, patch[0]
    return {"rows": args[3] == "true", "planes": args[4] == "true"}


# cuDNN's path through channels-last data (_cuda._cudnn_reads_channels_last): 3x3 layers
# with output planes of at least 28 x 28; partial transpose tiles (40 and 200 channels,
# planes of 1024 and 1600 pixels), stride 2, batches of 1, 2 and 3 (a transpose block takes
# two images, or one), every kind of `other` the epilogue takes (per channel and numbers
# by the NCHW epilogue pass, the others by the general pass).
@pytest.mark.parametrize("policy", ["tf32", "fp16", "bf16"])
@pytest.mark.parametrize("kind", ["c11", "1c11", "0dim_cpu_f64", "0dim_cuda", "full_nchw", "chw"])
@pytest.mark.parametrize(
    "cfg",
    [(2, 16, 28, 28, 24, 3, 3, 1, 1, 1), (1, 32, 64, 64, 40, 3, 3, 2, 1, 1), (3, 64, 40, 40, 200, 3, 3, 1, 1, 1)],
    ids=["28px", "stride2", "cout200"],
)
def test_cudnn_path_through_channels_last_data(cfg, kind, policy, kernel_path, monkeypatch):
    if kernel_path == "cudnn":
        monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")  # the cuDNN path on every layer here
    dtype = set_policy(policy)
    x, w, b, stride, padding, dilation = make(cfg, dtype)
    reads_channels_last = _cuda.plan(x, w, b, ops.scalar_other(1.0), stride, padding, dilation, 1)[1]
    assert reads_channels_last == (kernel_path == "cudnn")
    shape = ops.output_shape(x, w, stride, padding, dilation)
    other = _others(shape, dtype)[kind]
    out = run_op(x, w, b, other, stride, padding, dilation)
    assert out.is_contiguous() and out.dtype == dtype
    assert_close64(out, reference64(x, w, b, other, stride, padding, dilation), policy)
    if kernel_path == "cudnn":
        kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, padding, dilation))
        assert re.search(r"\btranspose_kernel", kernels), kernels  # the input and NCHW passes
        assert "filter_transpose_kernel" not in kernels, kernels  # the weights in the input's launch


# The input and weights as cuDNN's path makes them channels-last: by one launch (dense NCHW
# input of 16-byte chunks, weights of its dtype), or by Tensor.contiguous for the input
# (planes of 49 pixels) and our copy alone for the weights; bit for bit either way.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "x_shape,w_shape",
    [((2, 16, 28, 28), (24, 16, 3, 3)), ((3, 64, 40, 40), (200, 64, 3, 3)),
     ((1, 32, 8, 8), (7, 32, 5, 5)), ((2, 16, 7, 7), (24, 16, 3, 3))],
    ids=["28px", "cout200", "5x5", "unaligned_plane"],
)
def test_operands_to_channels_last_copies_exactly(x_shape, w_shape, dtype):
    cl = torch.channels_last
    x = torch.randn(x_shape, device=DEV).to(dtype)
    w = torch.randn(w_shape, device=DEV).to(dtype)
    y, wy = _cuda._extension().operands_to_channels_last(x, w)
    assert y.is_contiguous(memory_format=cl) and torch.equal(y, x)
    assert wy.is_contiguous(memory_format=cl) and torch.equal(wy, w)


def test_cudnn_path_through_channels_last_data_unaligned(kernel_path):
    """An input 16-byte misaligned in memory takes Tensor.contiguous instead of the
    transpose pass; the result is the same."""
    if kernel_path != "cudnn":
        pytest.skip("the cuDNN path's layouts")
    dtype = set_policy("fp16")
    x, w, b, stride, padding, dilation = make((2, 16, 28, 28, 24, 3, 3, 1, 1, 1), dtype)
    shifted = torch.empty(x.numel() + 1, dtype=dtype, device=DEV)[1:].view(x.shape)
    shifted.copy_(x)
    other = torch.randn(24, 1, 1, device=DEV).to(dtype)
    out = run_op(shifted, w, b, other, stride, padding, dilation)
    assert_close64(out, reference64(x, w, b, other, stride, padding, dilation), "fp16")


def test_cudnn_path_follows_the_cudnn_switches(monkeypatch):
    """The cuDNN path calls cuDNN's convolution below at::conv2d, so it reads
    torch.backends.cudnn itself: with cuDNN disabled the convolution is ATen's own (im2col
    and a GEMM, no cuDNN), and deterministic and benchmark modes give the same result."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)  # it takes these sizes
    set_policy("tf32")
    monkeypatch.setattr(_cuda, "_cudnn_pays", lambda *args: True)
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    x, w, b, stride, padding, dilation = make((2, 16, 12, 12, 24, 3, 3, 1, 1, 1), torch.float32)
    other = torch.randn(24, 1, 1, device=DEV)
    ref = reference64(x, w, b, other, stride, padding, dilation)

    def fn():
        return run_op(x, w, b, other, stride, padding, dilation)

    assert "im2col" not in _kernels_run(fn)
    with torch.backends.cudnn.flags(enabled=False):
        assert_close64(fn(), ref, "tf32")
        kernels = _kernels_run(fn)
    assert "im2col" in kernels and "conv_epilogue" in kernels, kernels
    with torch.backends.cudnn.flags(enabled=True, deterministic=True, benchmark=True):
        assert_close64(fn(), ref, "tf32")


def test_patch_rule_falls_back_where_the_binding_does_not_take_the_input(monkeypatch):
    """Where the patch kernel's size rule pays but the binding does not take the input (a
    bf16 NCHW row of 18 pixels is not whole 16-byte chunks), the planner asks the binding
    first, and the cuDNN path runs if its rule says so (not the K-table kernel)."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)  # it takes these sizes
    bf16 = set_policy("bf16")
    monkeypatch.setattr(_cuda, "_patch_pays", lambda *args: True)
    monkeypatch.setattr(_cuda, "_cudnn_pays", lambda *args: True)
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    x16, w16, _, stride, padding, dilation = make((2, 32, 12, 16, 24, 3, 3, 1, 0, 1), bf16)
    hopper = _cuda._device_capability(x16.device)[0] == 9  # built for sm_90a only
    assert _cuda._patch_runs(x16, w16, stride, padding, dilation) == hopper  # rows of 32 bytes
    x, w, b, stride, padding, dilation = make((2, 32, 12, 18, 24, 3, 3, 1, 0, 1), bf16)
    assert not _cuda._patch_runs(x, w, stride, padding, dilation)  # rows of 36 bytes
    other = torch.randn(24, 1, 1, device=DEV, dtype=bf16)
    _cuda.forget_plans()  # plan again under the replaced rules
    try:
        kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, padding, dilation))
        out = run_op(x, w, b, other, stride, padding, dilation)
    finally:
        _cuda.forget_plans()
    assert "conv_epilogue" in kernels and "conv_relu_add" not in kernels, kernels
    assert_close64(out, reference64(x, w, b, other, stride, padding, dilation), "bf16")


@pytest.mark.parametrize(
    "cfg,direct",
    [
        ((1, 16, 16, 16, 16, 3, 3, 1, 1, 1), True),  # 0.6 M multiply-adds, 4 K outputs
        ((4, 64, 32, 32, 64, 3, 3, 1, 1, 1), False),  # 151 M multiply-adds
        ((16, 3, 32, 32, 16, 3, 3, 1, 0, 1), False),  # 6.2 M multiply-adds, but 230 K outputs
        # 1.8 M outputs, but K = 27 and 16 channels: eight channels of four pixels a thread
        ((128, 3, 32, 32, 16, 3, 3, 1, 0, 1), True),
        ((128, 3, 32, 32, 32, 3, 3, 1, 0, 1), True),  # the same with 32 channels
        ((128, 3, 32, 32, 64, 3, 3, 1, 0, 1), False),  # with 64 channels
        ((128, 3, 64, 64, 16, 3, 3, 2, 0, 1), False),  # the first layer at stride 2
        # 37 K multiply-adds, but one output row's window of 4,096 channels is past shared
        # memory
        ((1, 4096, 3, 3, 1, 3, 3, 1, 1, 1), False),
    ],
)
def test_direct_kernel_runs_where_its_rule_says(cfg, direct, monkeypatch):
    """Under the size rules as they are, small convolutions run the direct kernel, larger
    ones and those whose window it cannot hold do not, without a fallback warning; the
    result is right either way."""
    monkeypatch.undo()  # the rules as they are (every kernel path)
    _cuda.forget_plans()
    set_policy("tf32")
    x, w, b, stride, padding, dilation = make(cfg, torch.float32)
    other = torch.randn(w.shape[0], 1, 1, device=DEV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, padding, dilation))
    assert ("direct_conv_kernel" in kernels) == direct, kernels
    out = run_op(x, w, b, other, stride, padding, dilation)
    assert_close64(out, reference64(x, w, b, other, stride, padding, dilation), "tf32",
                   rounding_scale64(x, w, stride, padding, dilation))


# (N, C, H, W, Cout, KH, KW, stride, padding, dilation, groups): more than 2^17 outputs and
# 8 or more output channels a group, where the direct kernel computes eight channels of four
# rows a thread
EIGHT_CHANNEL_CONFIGS = [
    # the KernelBench problem's layer, 16 images (a band's last rows not a multiple of four)
    (16, 3, 32, 32, 16, 3, 3, 1, 0, 1, 1),
    (4, 3, 64, 64, 12, 3, 3, 1, 1, 1, 1),  # channels past a multiple of 8
    (4, 8, 40, 44, 80, 3, 3, 2, 1, 1, 1),  # two channel blocks (64 and 16), stride 2
    (8, 3, 36, 36, 16, 3, 3, 1, 2, 2, 1),  # 3x3 taps with a row dilation
    (24, 5, 33, 47, 8, 3, 3, (1, 2), 1, (1, 3), 1),  # column stride and dilation
    (10, 4, 50, 30, 24, 5, 3, (1, 2), (2, 1), (2, 1), 1),  # taps at run time, dilation
    (1, 3, 150, 140, 32, 3, 3, 1, 1, 1, 1),  # several bands of rows
    (2, 6, 48, 48, 32, 3, 3, 1, 1, 1, 2),  # two groups of 16 channels
]


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("policy", ["tf32", "fp16", "bf16"])
@pytest.mark.parametrize("cfg", EIGHT_CHANNEL_CONFIGS, ids=lambda c: "x".join(map(str, c[:7])))
def test_direct_kernel_eight_channels_a_thread(cfg, policy, layout, kernel_path):
    """Layers of many outputs and few input channels: right on every path, and on the
    direct kernel's eight-channel form where the direct kernel runs them (with
    channels-last input a full-size `other`, with NCHW input a per-channel one)."""
    *conv, groups = cfg
    dtype = set_policy(policy)
    x, w, b, stride, padding, dilation = make(tuple(conv), dtype, layout)
    w = w[:, : x.shape[1] // groups].contiguous(memory_format=ops.output_memory_format(x, w))
    shape = ops.output_shape(x, w, stride, padding, dilation)
    other_shape = shape if layout == "cl" else (shape[1], 1, 1)
    other = torch.randn(other_shape, device=DEV).to(dtype)
    kernels = _kernels_run(lambda: run_op(x, w, b, other, stride, padding, dilation, groups))
    if kernel_path == "direct":
        assert re.search(r"direct_conv_kernel<[^>]*, 8>", kernels), kernels
    out = run_op(x, w, b, other, stride, padding, dilation, groups)
    ref = reference64(x, w, b, other, stride, padding, dilation, groups)
    assert out.is_contiguous(memory_format=expected_format(x, w))
    assert_close64(out, ref, policy, rounding_scale64(x, w, stride, padding, dilation, groups))


@pytest.mark.parametrize("policy", ["tf32", "fp16"])
@pytest.mark.parametrize("kind", OTHER_KINDS)
def test_direct_kernel_eight_channels_every_kind_of_other(kind, policy, kernel_path):
    """The eight-channel form's epilogue tests the kind of `other` once a tile, then runs
    its outputs with the element type known: every kind right (a band's last rows not a
    multiple of four), and on every path."""
    dtype = set_policy(policy)
    args = make((8, 3, 34, 37, 16, 3, 3, 1, 0, 1), dtype)  # 143 K outputs
    kernels = _kernels_run(lambda: assert_other_kind_matches(args, kind, dtype, policy))
    if kernel_path == "direct":
        assert re.search(r"direct_conv_kernel<[^>]*, 8>", kernels), kernels


def test_plans_are_remembered_per_signature(monkeypatch):
    """The planner runs once per call signature: again for a new shape or a changed switch,
    not for new data of the same signature."""
    set_policy("tf32")
    calls = []
    plan = _cuda.plan
    monkeypatch.setattr(_cuda, "plan", lambda *args: calls.append(1) or plan(*args))
    x, w, b, stride, padding, dilation = make((2, 16, 12, 12, 24, 3, 3, 1, 1, 1), torch.float32)
    other = torch.randn(24, 1, 1, device=DEV)
    for _ in range(3):
        x.normal_()
        ref = reference64(x, w, b, other, stride, padding, dilation)
        assert_close64(run_op(x, w, b, other, stride, padding, dilation), ref, "tf32")
    assert len(calls) == 1
    run_op(x[:1], w, b, other, stride, padding, dilation)  # another shape
    assert len(calls) == 2
    torch.backends.cudnn.allow_tf32 = False  # a setting the rules read
    run_op(x, w, b, other, stride, padding, dilation)
    assert len(calls) == 3


@pytest.mark.parametrize("policy", ["tf32", "bf16"])
def test_unbatched_input_and_no_bias(policy):
    dtype = set_policy(policy)
    x, w, _, stride, padding, dilation = make((1, 5, 10, 12, 9, 3, 3, 1, 1, 1), dtype)
    x3 = x[0]
    other = torch.randn(9, 1, 1, device=DEV).to(dtype)
    out = run_op(x3, w, None, other, stride, padding, dilation)
    assert out.dim() == 3 and out.is_contiguous()
    assert_close64(out, reference64(x3, w, None, other, stride, padding, dilation), policy)


def test_empty_batch():
    set_policy("tf32")
    x, w, b, stride, padding, dilation = make((0, 3, 8, 8, 4, 3, 3, 1, 1, 1), torch.float32)
    out = OP(x, w, b, ops.scalar_other(1.0), stride, padding, dilation, 1)
    assert out.shape == (0, 4, 8, 8)


@pytest.mark.parametrize("policy", ["tf32", "fp16"])
def test_unbatched_channels_last_strided_input(policy):
    dtype = set_policy(policy)
    x3 = torch.randn(9, 11, 8, device=DEV).to(dtype).permute(2, 0, 1)  # (C, H, W), C fastest
    w = (torch.randn(6, 8, 3, 3, device=DEV) / 8).to(dtype)
    b = torch.randn(6, device=DEV).to(dtype)
    other = torch.randn(6, 1, 1, device=DEV).to(dtype)
    args = ([1, 1], [1, 1], [1, 1])
    out = run_op(x3, w, b, other, *args)
    assert out.shape == (6, 9, 11) and out.is_contiguous()
    assert_close64(out, reference64(x3, w, b, other, *args), policy)


@pytest.mark.parametrize("policy", ["tf32", "fp32", "fp16"])
def test_non_contiguous_input_and_weight(policy):
    dtype = set_policy(policy)
    big = torch.randn(3, 12, 20, 26, device=DEV).to(dtype)
    x = big[:, 2:10, ::2, 1::2]  # strided view in every dim
    wbig = (torch.randn(14, 8, 5, 3, device=DEV) / 8).to(dtype)
    w = wbig.transpose(2, 3)  # (14, 8, 3, 5), non-contiguous
    b = torch.randn(14, device=DEV).to(dtype)[::1]
    other = torch.randn(14, 1, 1, device=DEV).to(dtype)
    args = ([1, 2], [1, 0], [1, 1])
    out = run_op(x, w, b, other, *args)
    assert_close64(out, reference64(x, w, b, other, *args), policy)
    # channels-last weight with an NCHW input: channels-last output, like eager
    wcl = w.contiguous(memory_format=torch.channels_last)
    out = run_op(x.contiguous(), wcl, b, other, *args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert_close64(out, reference64(x, w, b, other, *args), policy)


@pytest.mark.parametrize("policy", ["tf32", "fp32", "fp16"])
def test_nan_and_inf_like_eager(policy):
    dtype = set_policy(policy)
    x, w, b, stride, padding, dilation = make((2, 4, 12, 12, 6, 3, 3, 1, 1, 1), dtype)
    x[0, 1, 3, 4] = float("nan")
    x[1, 2, 7, 7] = float("inf")
    x[1, 0, 2, 9] = float("-inf")
    b[2] = float("nan")
    other = torch.randn(6, 1, 1, device=DEV).to(dtype)
    out = run_op(x, w, b, other, stride, padding, dilation)
    eager = torch.relu(F.conv2d(x, w, b, stride, padding, dilation)) + other
    assert torch.equal(torch.isnan(out), torch.isnan(eager))
    assert torch.equal(torch.isinf(out), torch.isinf(eager))
    assert torch.equal(out[torch.isinf(out)], eager[torch.isinf(eager)])
    finite = torch.isfinite(eager)
    ref = reference64(x, w, b, other, stride, padding, dilation)
    rel_tol, atol_scale, rtol = POLICIES[policy][2]
    torch.testing.assert_close(
        out.double()[finite], ref[finite], atol=atol_scale * ref[finite].abs().max().item(),
        rtol=rtol,
    )
    # relu(nan) is nan, relu(-x) is 0: an all-negative channel gives exactly `other`
    w2 = w.clone()
    w2[0].zero_()
    b2 = b.clone()
    b2[0] = -1.0
    x2 = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    out = run_op(x2, w2, b2, other, stride, padding, dilation)
    assert torch.equal(out[:, 0], other[0].expand_as(out[:, 0]))


def test_current_stream_is_used():
    set_policy("tf32")
    x_src, w, b, stride, padding, dilation = make((4, 16, 32, 32, 32, 3, 3, 1, 1, 1), torch.float32)
    other = torch.randn(32, 1, 1, device=DEV)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        x = torch.zeros_like(x_src)
        torch.cuda._sleep(50_000_000)  # ~tens of ms: the copy below lands late on `stream`
        x.copy_(x_src)
        out = OP(x, w, b, other, stride, padding, dilation, 1)
    stream.synchronize()
    assert_close64(out, reference64(x_src, w, b, other, stride, padding, dilation), "tf32")


def test_poisoned_outputs_twice():
    set_policy("tf32")
    x, w, b, stride, padding, dilation = make((3, 7, 19, 21, 33, 3, 3, 1, 1, 1), torch.float32)
    other = torch.randn(3, 33, 19, 21, device=DEV)
    ref = reference64(x, w, b, other, stride, padding, dilation)
    for _ in range(2):
        assert_close64(run_op(x, w, b, other, stride, padding, dilation), ref, "tf32")


def _opcheck_samples():
    samples = []
    for dtype, layout in ((torch.float32, "nchw"), (torch.float16, "cl"), (torch.bfloat16, "nchw")):
        x, w, b, stride, padding, dilation = make((2, 4, 9, 8, 6, 3, 3, 1, 1, 1), dtype, layout)
        samples.append((x, w, b, torch.randn(6, 1, 1, device=DEV).to(dtype), stride, padding,
                        dilation, 1))
    x, w, b, stride, padding, dilation = make((2, 3, 9, 8, 5, 3, 2, 2, 1, 2), torch.float32)
    samples.append((x, w, None, ops.scalar_other(1.5), stride, padding, dilation, 1))
    samples.append((x[0], w, b, torch.randn(5, 4, 1, device=DEV), stride, padding, dilation, 1))
    return samples


@pytest.mark.parametrize("index", range(5))
def test_opcheck(index):
    torch.library.opcheck(OP, _opcheck_samples()[index])


@pytest.mark.parametrize("groups", [1, 5], ids=["dense", "depthwise"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_grads_match_eager(layout, groups):
    set_policy("fp32")
    x, w, b, stride, padding, dilation = make((2, 5, 10, 9, 10, 3, 3, 1, 1, 1), torch.float32,
                                              layout)
    w = w[:, : 5 // groups]  # (C_out, C_in / groups, kH, kW)
    other = torch.randn(10, 1, 1, device=DEV)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b, other)]
    out = OP(*leaves, stride, padding, dilation, groups)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    eager_leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b, other)]
    xe, we, be, oe = eager_leaves
    eager = torch.relu(F.conv2d(xe, we, be, stride, padding, dilation, groups)) + oe
    want = torch.autograd.grad(eager, eager_leaves, grad)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("needs", ["all", "input only", "other only"])
def test_grads_without_bias_unbatched(needs):
    """The C++ autograd kernel's bookkeeping: no bias (one input fewer), a 3-D input, and
    only some inputs requiring grad."""
    set_policy("fp32")
    x, w, _, stride, padding, dilation = make((1, 5, 10, 9, 7, 3, 3, 1, 1, 1), torch.float32)
    x = x[0]
    other = torch.randn(7, 1, 1, device=DEV)
    wants = {"all": (True, True, True), "input only": (True, False, False),
             "other only": (False, False, True)}[needs]

    def leaves():
        return [t.detach().clone().requires_grad_(r) for t, r in zip((x, w, other), wants)]

    fused, eager = leaves(), leaves()
    out = OP(fused[0], fused[1], None, fused[2], stride, padding, dilation, 1)
    grad = torch.randn_like(out)
    ref = torch.relu(F.conv2d(eager[0], eager[1], None, stride, padding, dilation)) + eager[2]
    got = torch.autograd.grad(out, [t for t in fused if t.requires_grad], grad)
    want = torch.autograd.grad(ref, [t for t in eager if t.requires_grad], grad)
    assert len(got) == sum(wants)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_fallbacks_are_announced_and_correct():
    set_policy("fp32")
    x, w, b, stride, padding, dilation = make((2, 4, 8, 8, 6, 3, 3, 1, 1, 1), torch.float64)
    other = torch.randn(6, 1, 1, device=DEV, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = OP(x, w, b, other, stride, padding, dilation, 1)
    assert_close64(out, reference64(x, w, b, other, stride, padding, dilation), "fp32")
    from fx_fuse import _cuda

    if "the fused kernel does not handle torch.float64" not in _cuda._warned:
        pytest.fail("float64 fallback was not announced")
    assert all("reference (ATen) path" in str(c.message) for c in caught)


# (N, C, H, W, Cout, groups, K, stride, padding, dilation), the kind of `other`
GROUPED_CONFIGS = [
    ((2, 8, 9, 11, 6, 2, 3, 1, 1, 1), "c11"),  # two groups of 3 output channels
    ((2, 32, 14, 14, 32, 32, 3, 1, 1, 1), "full_nchw"),  # depthwise
    ((3, 16, 15, 13, 32, 16, 3, 2, 1, 1), "0dim_cpu_f64"),  # two filters per channel, strided
    ((1, 12, 10, 10, 12, 4, 5, 1, 4, 2), "full_noncontig"),  # dilated, padding past the kernel
    ((1, 4, 300, 9, 24, 2, 3, 1, 1, 1), "111w"),  # 12 output channels per group
    ((1, 4, 200, 400, 4, 4, 3, 4, 1, 1), "n111"),  # stride 4: a window past shared memory
    ((2, 3, 70, 40, 18, 3, 5, 1, 2, 1), "chw"),  # six filters per channel (4 + 2), 5x5
    ((1, 8, 33, 65, 8, 8, 3, 2, 2, 2), "1h1"),  # strided and dilated, partial tiles
    # the depthwise kernel's sizes compiled in, rows by 16-byte loads (W a multiple of 8)
    ((2, 16, 20, 48, 16, 16, 3, 1, 1, 1), "1c11"),  # 3x3, two column tiles
    ((1, 8, 66, 72, 16, 8, 3, 1, 1, 1), "full_cl"),  # two filters per channel, partial tiles
    ((1, 6, 17, 24, 6, 6, 5, 1, 2, 1), "111w"),  # 5x5
    ((1, 6, 30, 32, 6, 6, 5, 2, 2, 1), "full_noncontig"),  # 5x5 stride 2, 4 planes a block
    ((1, 4, 24, 40, 4, 4, 7, 1, 3, 1), "chw"),  # 7x7
    ((2, 8, 31, 40, 8, 8, 3, 2, 1, 1), "n111"),  # 3x3 stride 2
    ((1, 4, 20, 16, 16, 4, 3, 1, 1, 1), "full_nchw"),  # four filters per channel
    # 7x7 stride 2 on 8-row planes: shared memory holds 4 planes a block, not 8
    ((1, 3, 16, 16, 3, 3, 7, 2, 3, 1), "c11"),
    ((2, 32, 20, 24, 32, 8, 3, 1, 1, 1), "1h1"),  # groups of 4 channels, 16-byte rows
    ((1, 64, 12, 16, 64, 2, 3, 1, 1, 1), "c11"),  # groups of 32: past the kernel's shared memory
    # the channels-last kernel: tiles past the plane's edges, 7x7 weights in chunks of channels
    ((2, 24, 9, 13, 24, 24, 3, 2, 1, 1), "full_cl"),  # 3x3 stride 2, 5 x 7 outputs
    ((2, 40, 11, 7, 40, 40, 5, 1, 2, 1), "full_noncontig"),  # 5x5, 11 x 7 outputs
    ((1, 16, 13, 12, 16, 16, 5, 2, 0, 1), "0dim_cpu_f64"),  # 5x5 stride 2, no padding
    ((1, 512, 9, 10, 512, 512, 7, 1, 3, 1), "c11"),  # 7x7: three chunks of channels a pixel
    ((2, 256, 64, 64, 256, 256, 3, 1, 1, 1), "1c11"),  # fp32: more tiles than one wave holds
]


def grouped_args(cfg, other_kind, dtype, layout):
    n, c, h, w, cout, groups, k, stride, padding, dilation = cfg
    x = torch.randn(n, c, h, w, device=DEV).to(dtype)
    wt = torch.randn(cout, c // groups, k, k, device=DEV) / math.sqrt(c // groups * k * k)
    wt, b = wt.to(dtype), torch.randn(cout, device=DEV).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
        wt = wt.contiguous(memory_format=torch.channels_last)
    stride, padding, dilation = [stride] * 2, [padding] * 2, [dilation] * 2
    other = _others(ops.output_shape(x, wt, stride, padding, dilation), dtype)[other_kind]
    return x, wt, b, other, stride, padding, dilation, groups


@pytest.mark.parametrize("path", ["depthwise", "cudnn", "direct"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("cfg,other_kind", GROUPED_CONFIGS,
                         ids=lambda c: "x".join(map(str, c[:6])) if isinstance(c, tuple) else c)
def test_grouped_convolutions(cfg, other_kind, policy, layout, path, monkeypatch):
    """Grouped convolutions run the direct kernel (where its rule picks it, here for the
    "direct" path, and it takes the sizes), else the depthwise kernel of the input's layout
    (where its rule picks it, here for the "depthwise" path, and it takes the sizes: NCHW,
    where its shared memory holds a group's windows; channels-last, one channel per group
    at a compiled size), else cuDNN's grouped convolution and the epilogue pass, whatever
    the switches, without a fallback warning."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: path == "direct")
    monkeypatch.setattr(_cuda, "_depthwise_pays", lambda *args: path == "depthwise")
    _cuda.forget_plans()
    dtype = set_policy(policy)
    args = grouped_args(cfg, other_kind, dtype, layout)
    x, wt = args[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = run_op(*args)
    assert out.is_contiguous(memory_format=expected_format(x, wt))
    assert_close64(out, reference64(*args), policy)
    kernels = _kernels_run(lambda: run_op(*args))
    ext = _build.load()
    fits = ext.depthwise_kernel_fits(x, wt, *args[4:7])
    direct = path == "direct" and ext.direct_kernel_fits(x, wt, *args[4:7])
    depthwise = path == "depthwise" and fits
    name = "depthwise_cl_kernel" if layout == "cl" else "depthwise_conv_kernel"
    assert ("direct_conv_kernel" in kernels) == direct, kernels
    assert (name in kernels) == depthwise, kernels
    assert ("conv_epilogue" in kernels) == (not (depthwise or direct)), kernels
    if layout == "cl" and path == "depthwise":
        _, cin, _, _, cout, groups, k, stride, _, dilation = cfg
        compiled = (k, stride) in ((3, 1), (3, 2), (5, 1), (5, 2), (7, 1)) and dilation == 1
        assert fits == (groups == cin == cout and compiled and cin % 4 == 0)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("policy", ["tf32", "bf16"])
def test_depthwise_input_off_16_byte_alignment(policy, layout, monkeypatch):
    """An input that starts one element past a 16-byte boundary: the NCHW depthwise kernel
    stages its rows element by element instead of by 16-byte loads, the channels-last one
    reads an aligned copy (its loads are groups of 4 channels), with the same result."""
    monkeypatch.setattr(_cuda, "_direct_pays", lambda *args: False)  # it takes these sizes
    monkeypatch.setattr(_cuda, "_depthwise_pays", lambda *args: True)
    _cuda.forget_plans()
    dtype = set_policy(policy)
    args = grouped_args((2, 16, 20, 48, 16, 16, 3, 1, 1, 1), "c11", dtype, layout)
    x = args[0]
    memory_format = torch.channels_last if layout == "cl" else torch.contiguous_format
    flat = torch.empty(x.numel() + 1, device=DEV, dtype=dtype)[1:]
    shifted = torch.as_strided(flat, x.shape, x.stride()).copy_(x)
    assert shifted.is_contiguous(memory_format=memory_format) and shifted.data_ptr() % 16 != 0
    out = run_op(shifted, *args[1:])
    name = "depthwise_cl_kernel" if layout == "cl" else "depthwise_conv_kernel"
    assert name in _kernels_run(lambda: run_op(shifted, *args[1:]))
    assert_close64(out, reference64(*args), policy)
    torch.testing.assert_close(out, run_op(*args), atol=0, rtol=0)


def test_kernelbench_headline_criterion():
    """KernelBench level 2 problem 1: relu(conv(x)) + bias, torch.rand inputs, default
    TF32 flags, allclose(atol=rtol=1e-4)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(64, 128, 3).to(DEV)
    bias = torch.nn.Parameter(torch.randn(128, 1, 1, device=DEV))
    x = torch.rand(128, 64, 128, 128, device=DEV)
    with torch.no_grad():
        eager = torch.relu(conv(x)) + bias
        fused = OP(x, conv.weight, conv.bias, bias, [1, 1], [0, 0], [1, 1], 1)
    # grad mode (parameters require grad, as KernelBench calls it)
    fused_grad = OP(x, conv.weight, conv.bias, bias, [1, 1], [0, 0], [1, 1], 1)
    for out in (fused, fused_grad):
        diff = (out - eager).abs().max().item()
        assert torch.allclose(eager, out, atol=1e-4, rtol=1e-4), f"max |diff| {diff:.3e}"


def test_output_over_2_31_elements():
    free, _ = torch.cuda.mem_get_info()
    if free < 14 * 2**30:
        pytest.skip("needs ~14 GB of free GPU memory")
    set_policy("fp16")
    n, c, h, w_, cout = 17, 4, 1024, 1024, 128  # output 17*128*1024*1024 > 2^31 elements
    x = torch.randn(n, c, h, w_, device=DEV, dtype=torch.float16)
    w = (torch.randn(cout, c, 3, 3, device=DEV) / 6).half()
    b = torch.randn(cout, device=DEV).half()
    other = torch.randn(cout, 1, 1, device=DEV).half()
    out = OP(x, w, b, other, [1, 1], [1, 1], [1, 1], 1)
    assert out.numel() > 2**31
    for i in (0, n - 2, n - 1):
        ref = reference64(x[i : i + 1], w, b, other, [1, 1], [1, 1], [1, 1])
        assert_close64(out[i : i + 1], ref, "fp16")
    del out
    # channels-last: the last pixels of the last image sit past 2^31 too
    xcl = x.contiguous(memory_format=torch.channels_last)
    del x
    out = OP(xcl, w, b, other, [1, 1], [1, 1], [1, 1], 1)
    i = n - 1
    ref = reference64(xcl[i : i + 1], w, b, other, [1, 1], [1, 1], [1, 1])
    assert_close64(out[i : i + 1], ref, "fp16")
