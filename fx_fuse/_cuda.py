"""The CUDA implementation of ``fx_fuse::conv2d_relu_add``.

The kernel the dispatcher runs for CUDA tensors is C++ (``kernels/op.cpp``), registered by
the first CUDA call (``conv2d_relu_add`` here, which the op's default implementation calls
until then). For each call signature it asks ``plan`` once how the call runs and remembers
the answer: the fused kernels (``kernels/``, built on first use by ``_build``); cuDNN's
convolution followed by one fused bias + relu + add pass (the cuDNN path), where the
measured size rules (``_path``) find it faster, or in cuDNN's benchmark mode where it
times faster (``_autotune``); or the reference (ATen) composition for the cases the
kernels do not cover, announced once per reason.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Set

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from . import _autotune, _build, ops

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INT32_MAX = 2**31 - 1
# Exact fp32 (TF32 off) on the tensor cores is 3xTF32 (the patch and K-table kernels), whose
# fp32 accumulation rounds toward zero: its error grows with K, ~3.5e-9 x K of the output's
# norm where cuDNN's fp32 convolution stays near 1e-7-1e-6. At this K the worst element is
# off by ~1.2e-4 of its rounding scale, ten times cuDNN's error, and the error keeps growing
# (docs/performance.md, v70). Beyond it exact fp32 runs cuDNN's path where it can.
_F32X3_MAX_K = 4608

_warned: Set[str] = set()
_properties: Dict[int, Any] = {}
_registered = False


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"{ops.OP_NAME}: {reason}; running the reference (ATen) path", stacklevel=4)


def _device_properties(device: torch.device):
    """The GPU's properties (compute capability, SM count), read once per device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _properties:
        _properties[index] = torch.cuda.get_device_properties(index)
    return _properties[index]


def _device_capability(device: torch.device) -> tuple:
    props = _device_properties(device)
    return (props.major, props.minor)


def _max_image_offset(x: Tensor, weight: Tensor, padding, dilation) -> int:
    """A bound on every element offset the kernel forms inside one image (window origin plus
    the (c, kh, kw) tap, padding included): the kernel keeps these in 32 bits."""
    c, kh, kw = weight.shape[1], weight.shape[2], weight.shape[3]
    h, w = x.shape[2], x.shape[3]
    return (
        (c - 1) * x.stride(1)
        + (h + padding[0] + dilation[0] * (kh - 1)) * x.stride(2)
        + (w + padding[1] + dilation[1] * (kw - 1)) * x.stride(3)
    )


def _use_wgmma(device: torch.device) -> bool:
    """Hopper's wgmma path, on a compute capability 9.0 GPU unless FX_FUSE_DISABLE_WGMMA=1
    asks for the portable mma.sync kernel (for comparisons and tests)."""
    return _device_capability(device)[0] == 9 and os.environ.get("FX_FUSE_DISABLE_WGMMA") != "1"


def _patch_enabled() -> bool:
    """Whether the patch kernel (Hopper) may run: unless FX_FUSE_DISABLE_PATCH=1 asks for the
    K-table kernels (for comparisons and tests)."""
    return os.environ.get("FX_FUSE_DISABLE_PATCH") != "1"


def _patch_pays(
    pixels: int,
    cout: int,
    k: int,
    sms: int,
    channels_last: bool,
    elem: int,
    width: int,
    exact_fp32: bool,
    out_width: int,
) -> bool:
    """The size rule for the patch kernel: its tiles are 256 output pixels x 128 channels
    (64 for layers of at most 64) on a persistent grid of one CTA per SM, so it needs
    enough tiles to spread over the SMs, and K = C_in x kH x kW no larger than the conv's
    arithmetic lets its single pass over the output pay for (cuDNN multiplies faster
    beyond). ``elem``: the input's element size; ``width``: its rows' length in pixels;
    ``exact_fp32``: fp32 with TF32 off (3xTF32 on the patch kernel); ``out_width``: the
    output rows' length in pixels.
    Exact fp32, in either layout, where cuDNN's exact fp32 convolution is 1.2-8x slower:
    K >= 288 (a half-empty channel block loses, K = 144), from 16 output channels and a
    quarter of a tile per SM (v31).
    NCHW input: rows longer than 64 bytes (each row of a patch is one bulk copy: short
    ones cost more than they bring), from 16 output channels and half a tile per SM, and
    K <= 2304 (fp32: 3456; beyond, cuDNN multiplies faster); 16-bit with K above 1152,
    rows longer than 128 bytes (cuDNN's 16-bit kernels multiply faster at such K on
    narrower rows, v64).
    Channels-last input, where cuDNN's sm90 kernels are stronger still: more than 64 output
    channels (fp32: 64 or more; 16-bit: 64 where the output rows fill the tiles' rows,
    ``_row_fill``, to 95 %), 4 tiles per SM and K below 1024.
    Measured on the H200 (GPU ms, patch / K-table / cuDNN path; docs/performance.md
    v24-v30): the headline 1.298 / 1.943 / 2.578 (bf16 0.856 / 1.861 / 2.303), with 64
    output channels 0.811 / 1.728 / 1.461 (bf16 0.556 / 1.175 / 1.469); K = 2304, 32 px,
    batch 32 0.159 / 0.394 / 0.182, batch 128 0.573 / 1.542 / 0.618 (bf16, 64-byte rows,
    0.438 / 1.234 / 0.362); K = 4608 1.412 / 6.787 / 0.976; 64 output channels at 56 px,
    batch 32 (2.97 tiles per SM) 0.060 / 0.165 / 0.090 (bf16 0.047 / 0.117 / 0.053), batch
    8 (0.7 tiles per SM) 0.021 / 0.055 / 0.029 (bf16 0.018 / 0.043 / 0.022); 128
    channels at 28 px, batch 32 (0.74 tiles per SM) 0.048 / 0.084 / 0.052; 32 output
    channels 0.129 / 0.477 / 0.199 (bf16 0.126 / 0.330 / 0.140). Channels-last: the
    headline 1.374 / 2.324 / 1.507, with 64 output channels 1.127 / 1.878 / 0.890, 56 px,
    batch 32 0.070 / 0.104 / 0.050; since the staged channels-last output (v35-v36), with
    64 output channels 0.730 / 1.879 / 0.888 (bf16 0.465 / 1.009 / 0.447), 56 px, batch 128
    0.165 / 0.385 / 0.186, batch 32 0.055 / 0.104 / 0.050 (v48b); bf16 with 64 output
    channels (v69) at 126-128 px output rows 0.408 / 1.007 / 0.445 (the headline; fp16
    0.419 / 1.009 / 0.471), batch 64 0.210 / 0.511 / 0.223, and at 56-224 px (rows of
    87.5 % of their tiles) 0.096 / 0.212 / 0.095 (56 px, batch 128), 0.361 / 0.799 /
    0.340 (224 px, batch 32). Exact fp32: the headline
    2.805 / 10.851 / 7.601 (channels-last 2.818 / 9.249 / 8.477), 64 output channels
    1.951 / 5.451 / 3.836 (channels-last 1.959 / 4.647 / 4.435), ResNet 56 px batch 32
    channels-last 0.133 / 0.244 / 0.334, batch 4 (0.37 tiles per SM) 0.038 / 0.057 /
    0.047, K = 4608 with 64-byte rows 2.546 / 14.251 / 6.465, 32 output channels 0.279 /
    0.933 / 0.384, 16 output channels 0.273 / 0.917 / 0.365; 16 input channels at 64 px
    (K = 144) 0.075 / 0.136 / 0.057. 16-bit NCHW beyond K = 1152 (v64, bf16; fp16 alike):
    K = 2304 at 56 px (112-byte rows), batch 16 0.164 / 0.448 / 0.143, at 112 px, batch 8
    0.254 / 0.840 / 0.276; K = 1728 at 56 px, batch 32 0.204 / 0.666 / 0.201; K = 1152 at
    64 px, batch 64 0.167 / 0.674 / 0.268 (fp32 at K = 2304, 56 px: 0.227 / 0.558 / 0.248).
    fp32 NCHW past K = 2304 (v71): K = 2880 at 64 px, batch 16 0.417 / 1.478 / 0.512;
    5x5 K = 3200 at 64 px, batch 16 0.142 / 0.547 / 0.282, batch 1 0.057 / 0.231 / 0.075,
    at 80 px, batch 8 0.145 / 0.522 / 0.164; K = 3456 at 32 px, batch 32 0.321 / 0.863 /
    0.322; K = 4608 at 28 px, batch 32 0.545 / 2.854 / 0.382. 16 output channels (v71):
    fp32 32 -> 16 at 32 px, batch 128 0.037 / 0.059 / 0.074, bf16 64 -> 16 at 56 px,
    batch 32 0.041 / 0.115 / 0.044."""
    tiles = -(-pixels // 256) * -(-cout // 128)
    if exact_fp32:
        return k >= 288 and cout >= 16 and 4 * tiles >= sms
    if channels_last:
        if elem == 4:
            enough_out = cout >= 64
        else:
            enough_out = cout > 64 or (cout == 64 and _row_fill(out_width) >= 0.95)
        return enough_out and tiles >= 4 * sms and k < 1024
    min_row_bytes = 128 if elem == 2 and k > 1152 else 64
    max_k = 3456 if elem == 4 else 2304
    return k <= max_k and width * elem > min_row_bytes and cout >= 16 and 2 * tiles >= sms


def _row_fill(out_width: int) -> float:
    """The share of the patch kernel's tile columns that an output row fills: its tiles
    are the widest power of two up to 128 pixels that covers the row (the binding narrows
    them only where a patch would not fit its slot: long kernels, wide strides)."""
    tile_w = min(128, max(8, 1 << (out_width - 1).bit_length()))
    return out_width / (-(-out_width // tile_w) * tile_w)


def _f32x3_past_bound(dtype: torch.dtype, allow_tf32: bool, k: int) -> bool:
    """Whether a layer of K = ``k`` is exact fp32 (fp32, TF32 off) past ``_F32X3_MAX_K``,
    where 3xTF32 no longer keeps fp32's accuracy."""
    return dtype == torch.float32 and not allow_tf32 and k > _F32X3_MAX_K


def _patch_runs(x: Tensor, weight: Tensor, stride, padding, dilation) -> bool:
    """Whether the binding takes these arguments on the patch kernel (its alignment and fit
    requirements: e.g. NCHW rows of whole 16-byte chunks)."""
    name = _extension().kernel_name(
        x, weight, stride, padding, dilation, allow_tf32=True, hopper=True, patch=True
    )
    return name.startswith("patch")


def _cudnn_enabled() -> bool:
    """Whether the cuDNN path may run: unless FX_FUSE_DISABLE_CUDNN=1 asks for the fused
    kernels everywhere (for comparisons and tests)."""
    return os.environ.get("FX_FUSE_DISABLE_CUDNN") != "1"


def _cudnn_runs(out_shape) -> bool:
    """Whether the cuDNN path may run and its epilogue pass takes the output (a per-image
    index of 32 bits) for a dense convolution."""
    return _cudnn_enabled() and math.prod(out_shape[1:]) < _INT32_MAX


# cuDNN's path through channels-last data (``_cudnn_reads_channels_last``): output planes
# from this many pixels (docs/performance.md, v74 and v75: ResNet 28 px gained 5 % and then
# 12 %; 14 px in fp32 lost 3 % and then gained 6 %, the one layer measured there).
_CUDNN_CL_MIN_PLANE = 28 * 28


def _cudnn_reads_channels_last(
    x: Tensor, weight: Tensor, out_shape, stride, dilation, groups: int
) -> bool:
    """Whether cuDNN's path reads an NCHW input channels-last: our transpose of the input
    (and the weights) to NHWC, cuDNN's NHWC kernel on it and an epilogue pass that writes
    NCHW, instead of cuDNN's own transposes around the same kernel (docs/performance.md,
    v81: 19-26 % less GPU time). Where that was measured: 3x3 layers at stride 1 or 2 without
    dilation, one group, TF32 or 16-bit, output planes of at least ``_CUDNN_CL_MIN_PLANE``
    pixels, and channels and planes of whole 16-byte chunks, as the transposes' tiles
    take them (1x1 and 7x7 layers run other cuDNN kernels, slower on channels-last data)."""
    vec = 16 // x.element_size()
    plane, out_plane = x.shape[2] * x.shape[3], out_shape[2] * out_shape[3]
    tf32_or_16bit = x.dtype in (torch.float16, torch.bfloat16) or (
        x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    )
    return (
        groups == 1
        and tuple(weight.shape[2:]) == (3, 3)
        and max(stride) <= 2
        and tuple(dilation) == (1, 1)
        and tf32_or_16bit
        and out_plane >= _CUDNN_CL_MIN_PLANE
        and x.shape[1] % vec == 0
        and plane % vec == 0
        and out_shape[1] % vec == 0
        and out_plane % vec == 0
    )


def _cudnn_pays(
    cin: int,
    cout: int,
    k: int,
    strided: bool,
    tiles: int,
    sms: int,
    exact_fp32: bool,
    channels_last: bool,
    elem: int,
) -> bool:
    """The size rule for the cuDNN path (cuDNN's convolution without bias, then one bias +
    relu + add pass). ``k`` = C_in x kH x kW; ``tiles``: the K-table kernel's tiles of 128
    pixels x 64 (C_out <= 64) or 128 channels; ``channels_last``: the input's layout;
    ``elem``: the input's element size.

    Below 16 input channels only for exact fp32 (cuDNN's tensor-core kernels pad the
    channels, and the K-table kernel wins; but its 3xTF32 multiplies a channel block padded
    to 32 three times, and cuDNN's fp32 arithmetic is faster, v71). Otherwise cuDNN for
    channels-last input (its sm90 channels-last kernels beat the K-table kernel), for
    exact fp32 (3xTF32 on the K-table kernel is slower than cuDNN's fp32), for 16-bit
    input (cuDNN's 16-bit kernels beat the K-table kernel's on every 16-bit layer
    measured, v64) but 1x1 strided layers (there cuDNN's 16-bit kernels lose
    as its fp32 ones do, v66), where the K-table tiles do not fill one wave of the SMs
    (no split-K), at stride 1 where the conv is compute-heavy (K >= 1024, or K >= 512
    unless the problem is large, 64 tiles per SM: there the K-table kernel's single pass
    over the output wins), when strided at K >= 1024 with more than 128 output channels
    (two K-table channel tiles or more: v64's and v66's strided layers), and where it has
    few output channels: 32 or fewer at stride 1 (half of each K-table tile empty), 64 or
    fewer when strided (the K-table kernel's 64-channel tiles lose there, v64). The patch
    kernel, where its rule picks it, goes first.
    Measured on the H200, GPU ms, K-table kernel / cuDNN path (``benchmarks/bench_paths.py``,
    docs/performance.md v24): kept on the K-table kernel: the headline (120 tiles per SM,
    where the patch kernel does not take the input) 1.944 / 2.453 (bf16 1.876 / 2.304 in
    v24; v64 read cuDNN's 16-bit path 11 % faster on a layer of that size, below),
    1x1 layers 0.041 / 0.059 (128 to 512 channels, 28 px) and 0.061 / 0.101 (64 to 256, 56
    px), 0.053 / 0.050 (256 to 64), strided layers 0.050 / 0.054 (28 px) and 0.174 / 0.185
    (128 channels, 64 px), 8 input channels 0.042 / 0.063, the 3-channel stem 0.199 /
    0.367; on cuDNN: 32 output channels at 128 px (K = 288) 0.477 / 0.198 (bf16 0.330 /
    0.140) and at 64 px (K = 144) 0.064 / 0.057, 64 channels at 64 px (K = 576) 0.248 /
    0.113, K = 1152 at 64 px 0.633 / 0.425, exact fp32 on the headline 10.86 / 7.60,
    channels-last headline 2.226 / 1.397. 16-bit on cuDNN (v64, bf16, batch 32 unless
    given): 1x1 layers 0.123 / 0.055 (256 to 256 channels at 56 px; fp16 the same), 0.076 /
    0.039 (64 to 256), 0.040 / 0.026 (256 to 64), 0.044 / 0.020 (128 to 512 at 28 px);
    strided layers 0.139 / 0.073 (128 to 256 channels, 56 to 28 px), 0.049 / 0.037 (64 to
    128); 126 px rows that the patch kernel cannot take (64 to 128 channels, 3x3), batch
    128 (120 tiles per SM) 2.546 / 2.268, batch 32 0.650 / 0.581. fp32 strided layers
    (v64, stride 2, batch 32 unless given): on the K-table kernel 64 to 128 channels from
    56 px 0.050 / 0.054 (batch 128 0.145 / 0.174), 128 to 128 from 64 px 0.091 / 0.105, 1x1
    256 to 512 from 56 px 0.082 / 0.134; on cuDNN 64 to 64 from 112 px 0.202 / 0.137, 32 to
    64 from 224 px, batch 16 0.210 / 0.186, 128 to 256 from 56 px 0.142 / 0.114 (K =
    1152; 128 to 128 from 64 px, one channel tile at the same K, stays on the K-table
    kernel, above). 1x1 strided layers (v66, batch 32 unless given), on the K-table kernel
    in 16-bit too: bf16 64 to 128 from 56 px 0.015 / 0.026, 256 to 512 from 56 px 0.068 /
    0.095 (fp16 the same; batch 8 0.022 / 0.030), 512 to 1024 from 28 px 0.055 / 0.086
    (batch 64 0.105 / 0.164); on cuDNN at K = 1024, 1024 to 2048 from 14 px, bf16 0.069 /
    0.055, fp32 0.097 / 0.069. Exact fp32 below 16 input channels (v71), on cuDNN: 3 to
    32 channels at 224 px, batch 8 0.137 / 0.079, 5x5 batch 1 channels-last 0.041 /
    0.026; 3 to 16 at 32 px, batch 128 0.043 / 0.022; 8 to 64 at 128 px, batch 16 0.180 /
    0.119, 8 to 32 at 64 px channels-last, batch 64 0.127 / 0.087; against two near ties,
    the 7x7 stride-2 stem at 224 px, batch 32 0.412 / 0.420, 3 to 64 at 224 px
    channels-last, batch 16 0.319 / 0.330."""
    if cin < 16:
        return exact_fp32
    compute_heavy = k >= 1024 or (k >= 512 and tiles < 64 * sms)
    stride_one = not strided and compute_heavy
    strided_heavy = strided and k >= 1024 and cout > 128
    few_out = cout <= (64 if strided else 32)
    sixteen_bit = elem == 2 and not (strided and k == cin)
    return (
        channels_last
        or exact_fp32
        or sixteen_bit
        or tiles < sms
        or stride_one
        or strided_heavy
        or few_out
    )


def _channels_innermost(x: Tensor) -> bool:
    """Whether ``x`` (dense in its layout) is read channels-last, as the binding reads it."""
    return x.shape[1] > 1 and x.stride(1) == 1


def _depthwise_pays(out_shape, taps: int, cpg: int, channels_last: bool) -> bool:
    """The size rule for the depthwise kernels (``cpg`` input channels per group).

    NCHW input: output planes of at least 784 pixels (28 x 28) for groups of up to 4
    channels, or of at least 196 (14 x 14) for one channel and kernels of 25 taps (5 x 5) or
    more, where cuDNN's grouped convolution slows with the taps. Measured on the H200, GPU
    us, depthwise kernel / cuDNN's convolution and the epilogue pass (docs/performance.md,
    v43-v44): one channel, 3x3 at 56 px (32 x 144 channels) 58 / 105, at 28 px 25 / 47, at
    14 px 44 / 39, at 7 px 39 / 24; 5x5 at 14 px 59 / 95, 5x5 stride 2 from 28 px 27 / 39;
    7x7 at 56 px 112 / 469. Groups of 4 at 56 px 93 / 159, of 2 88 / 296, of 8 at 28 px 94 /
    79; groups of 4 at stride 2 to 28 px 72 / 72.

    Channels-last input (its kernel takes one channel per group): output planes of at least
    784 pixels (28 x 28). Measured, GPU us, kernel / cuDNN's path (v45b): fp16 3x3 at 56 px
    (32 x 144 channels) 31 / 49, fp32 42 / 72; fp16 3x3 at 112 px 26 / 43; fp16 7x7 at 56 px
    72 / 83, fp32 91 / 201. Below: fp16 3x3 at 14 px 15.9 / 15.7 and at 7 px 9.7 / 9.2, fp16
    7x7 at 14 px 33 / 28 (v45's 5x5 at 14 px: 24 / 22); 5x5 at stride 2 to 14 px wins
    (15 / 18), the only stride-2 plane measured under 784 pixels."""
    pixels = out_shape[2] * out_shape[3]
    if channels_last:
        return pixels >= 784
    if cpg > 1:
        return cpg <= 4 and pixels >= 784
    return pixels >= 784 or (pixels >= 196 and taps >= 25)


def _direct_pays(
    macs: int, outputs: int, groups: int, cout: int, channels_last: bool, strided: bool
) -> bool:
    """The size rule for the direct kernel (one launch on the CUDA cores, the weights read
    as they are): dense convolutions of at most 2^23 multiply-adds and 2^17 output
    elements. There a call is a few microseconds of GPU time, and the other paths' second
    kernel (the cuDNN path's epilogue pass, the K-table kernel's weight preparation) and
    cuDNN's host time cost more than the direct kernel's multiplies on the CUDA cores.
    Measured on the H200 (docs/performance.md, v49): GPU us, direct kernel / the path the
    other rules pick (the cuDNN path, or the K-table kernel for 3 input channels): one
    16 x 16 image of 16 channels 5.1 / 7.1 (bf16 5.1 / 10.5), of 32 channels 8.8 / 10.5;
    eight of 16 channels 5.5 / 7.1; one 32 x 32 image of 16 channels 6.6 / 7.3; a 3-channel
    stride-2 stem to 32 x 32 x 32 (4 images, 2^17 outputs) 6.2 / 6.6. Beyond: 64 channels
    at 16 px (9.4 M multiply-adds) 13.1 / 11.1, 128 channels at 14 px 22.4 / 14.8, 3
    channels at 30 px output, batch 16 (230 K outputs) 8.5 / 6.3. Grouped convolutions keep
    their kernels: the direct kernel lost to cuDNN's grouped convolution on the one small
    depthwise layer measured (256 channels at 7 px, batch 8: 10.0 / 4.2).

    Larger NCHW layers of few input and output channels take it too (stride 1, at most 32
    output channels, K = C_in x taps times the output channels at most 1152, 2^20 outputs
    or more): past 2^17 outputs it computes eight channels of four pixels a thread, where
    the tensor-core kernels spend 128-channel tiles and 32-deep K slices on a few channels.
    Its time follows the multiply-adds (K x channels a pixel), theirs the pixels. Measured
    on the H200 (docs/performance.md, v84c), GPU us, direct / the fastest other path, 128
    images: 3 -> 16 channels at 32 px (the KernelBench layer) 10.3 / 19.8 (bf16 9.8 /
    22.4), at 64 px 38 / 77; 3 -> 32 at 32 px 16.8 / 23.0; 8 -> 16 at 32 px (K x channels
    1152) 18.6 / 34.7. Not with 32 images (0.46 M outputs: 7.4 / 7.3), 64 output channels
    (K x channels 1728: 32.4 / 24.6), channels-last input (28.3 / 19.6: the window's loads
    and the stores are gathers) or the 3 -> 32 stride-2 stem at 224 px (69.9 / 64.4)."""
    if groups != 1:
        return False
    if macs <= 1 << 23 and outputs <= 1 << 17:
        return True
    return (
        not channels_last
        and not strided
        and cout <= 32
        and macs * cout <= 1152 * outputs
        and outputs >= 1 << 20
    )


def _direct_runs(x: Tensor, weight: Tensor, stride, padding, dilation) -> bool:
    """Whether the binding takes these sizes on the direct kernel (a block's window and
    weights in shared memory)."""
    return _extension().direct_kernel_fits(x, weight, stride, padding, dilation)


def _grouped_path(x: Tensor, weight: Tensor, out_shape, stride, padding, dilation) -> str:
    """Which implementation runs a grouped convolution (``x`` dense in its layout):
    "depthwise" (the depthwise kernel of ``x``'s layout) where its size rule says it pays and
    it takes the sizes, else "cudnn" (cuDNN's grouped convolution, then the epilogue pass;
    the other kernels multiply one group)."""
    taps, cpg = weight.shape[2] * weight.shape[3], weight.shape[1]
    pays = _depthwise_pays(out_shape, taps, cpg, _channels_innermost(x))
    if pays and _depthwise_runs(x, weight, stride, padding, dilation):
        return "depthwise"
    return "cudnn"


def _depthwise_runs(x: Tensor, weight: Tensor, stride, padding, dilation) -> bool:
    """Whether the binding takes these sizes on the depthwise kernel of ``x``'s layout."""
    return _extension().depthwise_kernel_fits(x, weight, stride, padding, dilation)


def unsupported_reason(input: Tensor, weight: Tensor) -> Optional[str]:
    """Why the fused kernel cannot run these arguments, or None when it can."""
    if input.dtype not in _KERNEL_DTYPES:
        return f"the fused kernel does not handle {input.dtype}"
    if _device_capability(input.device) < (8, 0):
        return "the fused kernel needs a GPU of compute capability 8.0 or newer"
    if weight.shape[1] == 0:
        return "the fused kernel does not handle zero input channels"
    return None


def conv2d_relu_add(input, weight, bias, other, stride, padding, dilation, groups) -> Tensor:
    """The first CUDA call: registers the C++ kernels for the calls after it, and runs it."""
    return _extension().conv2d_relu_add(
        input, weight, bias, other, stride, padding, dilation, groups
    )


def _extension():
    """The compiled extension, its kernels registered as the op's CUDA and AutogradCUDA
    kernels (once)."""
    global _registered
    ext = _build.load()
    if not _registered:
        ext.register_op(_planner, ops.grads)
        _registered = True
    return ext


def forget_plans() -> None:
    """Make the C++ kernel ask ``plan`` again for every call signature (after a size rule
    changes, e.g. a test or a benchmark replacing one)."""
    if _registered:
        _build.load().forget_plans()


@torch._disable_dynamo
def _planner(input, weight, bias, other, stride, padding, dilation, groups):
    # ``plan`` is looked up on each call, so that a replaced one takes effect
    return plan(input, weight, bias, other, stride, padding, dilation, groups)


def plan(input, weight, bias, other, stride, padding, dilation, groups):
    """How the C++ kernel runs these arguments (called once per call signature):
    ``(path, input_channels_last, output_channels_last, hopper)``: ``path`` "direct" (the
    direct kernel) where ``_direct_pays`` and the binding takes the sizes, else from
    ``_path`` (``_grouped_path`` for groups > 1), or in cuDNN's benchmark mode the fastest
    of the ``_candidates`` timed (``_timed_path``); the layouts the input is read in (made
    dense in it: its own, or channels-last on cuDNN's path where
    ``_cudnn_reads_channels_last``) and the output is written in, and whether the wgmma
    kernels may run; or,
    for the arguments the kernels do not cover, the reference path's result (announced
    once per reason; that answer is not remembered). Bad arguments raise the op's errors."""
    stride, padding, dilation = ops.check_args(
        input, weight, bias, other, stride, padding, dilation, groups
    )
    reason = unsupported_reason(input, weight)
    if reason is None and (
        dilation[0] * (weight.shape[2] - 1) > 32767 or dilation[1] * (weight.shape[3] - 1) > 32767
    ):
        reason = "the fused kernel does not handle a dilated kernel extent over 32767"
    x = input.unsqueeze(0) if input.dim() == 3 else input
    # the input as the kernels read it: dense in its own layout (NCHW or channels-last)
    x_format = suggest_memory_format(x)
    x = x.contiguous(memory_format=x_format)
    if reason is None and _max_image_offset(x, weight, padding, dilation) > _INT32_MAX:
        reason = "the fused kernel does not handle an input image of 2^31 or more elements"
    out_shape = ops.output_shape(x, weight, stride, padding, dilation)
    if reason is None and groups > 1 and math.prod(out_shape[1:]) >= _INT32_MAX:
        reason = "the epilogue pass does not handle an output image of 2^31 or more elements"
    if reason is not None:
        _warn_once(reason)
        return ops.reference(input, weight, bias, other, stride, padding, dilation, groups)
    hopper = _use_wgmma(x.device)
    outputs = math.prod(out_shape)
    macs = outputs * math.prod(weight.shape[1:])
    channels_last = x_format == torch.channels_last
    strided = any(s > 1 for s in stride)
    direct = _direct_pays(macs, outputs, groups, weight.shape[0], channels_last, strided) and (
        _direct_runs(x, weight, stride, padding, dilation)
    )
    patch_runs = (
        groups == 1
        and hopper
        and _patch_enabled()
        and _patch_runs(x, weight, stride, padding, dilation)
    )
    if direct:
        path = "direct"
    elif groups > 1:
        path = _grouped_path(x, weight, out_shape, stride, padding, dilation)
    else:
        sms = _device_properties(x.device).multi_processor_count
        allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
        path = _path(x, weight, out_shape, stride, allow_tf32, sms, patch_runs)
    out_channels_last = ops.output_memory_format(input, weight) == torch.channels_last

    def layouts(path: str) -> tuple:
        reads_channels_last = x_format == torch.channels_last or (
            path == "cudnn"
            and _cudnn_reads_channels_last(x, weight, out_shape, stride, dilation, groups)
        )
        return (reads_channels_last, out_channels_last, hopper)

    if _autotune.enabled(x.device):
        candidates = _candidates(
            x, weight, out_shape, stride, padding, dilation, groups, direct, patch_runs
        )
        if len(candidates) > 1:
            args = (input, weight, bias, other, stride, padding, dilation, groups)
            path = _timed_path(path, candidates, layouts, args)
    return (path, *layouts(path))


def _candidates(
    x: Tensor, weight: Tensor, out_shape, stride, padding, dilation, groups: int, direct: bool,
    patch_runs: bool,
) -> List[str]:
    """The paths that can run these arguments (``x`` dense in its layout), for the timed
    choice: for a grouped convolution the depthwise kernel where it takes the sizes and
    the cuDNN path; else the K-table kernel, the patch kernel where it may run and takes
    them (``patch_runs``), the cuDNN path where it may run, and the direct kernel where its
    size rule and the binding take them (``direct``: past its rule, the direct kernel's
    time grows with the multiplies, on the CUDA cores); for exact fp32 past
    ``_F32X3_MAX_K``, not the tensor-core kernels where the cuDNN path runs."""
    if groups > 1:
        fits = _depthwise_runs(x, weight, stride, padding, dilation)
        return ["depthwise", "cudnn"] if fits else ["cudnn"]
    paths = ["fused"]
    if patch_runs:
        paths.append("patch")
    if _cudnn_runs(out_shape):
        paths.append("cudnn")
    if direct:
        paths.append("direct")
    k = math.prod(weight.shape[1:])
    if "cudnn" in paths and _f32x3_past_bound(x.dtype, torch.backends.cudnn.allow_tf32, k):
        paths = [path for path in paths if path not in ("fused", "patch")]
    return paths


def _timed_path(
    rule: str, candidates: List[str], layouts: Callable[[str], tuple], args: tuple
) -> str:
    """The path ``_autotune`` keeps for the op's arguments ``args`` among ``candidates``
    (``rule``: the size rules' path; ``layouts(path)``: the plan's other three fields for
    a path), each timed through the C++ kernel's runner with its plan."""

    def run(path: str) -> None:
        _extension().run_plan((path, *layouts(path)), *args)

    with torch.no_grad():
        measured = _autotune.times(candidates, run, args[0].device)
    return _autotune.fastest(rule, measured)


def _path(
    x: Tensor, weight: Tensor, out_shape, stride, allow_tf32: bool, sms: int, patch_runs: bool
) -> str:
    """Which implementation runs: "patch" (the patch kernel), "cudnn" (cuDNN's convolution
    and one epilogue pass) or "fused" (the K-table kernels). ``x`` is dense in its layout
    (NCHW or channels-last); ``sms``: the GPU's SM count; ``patch_runs``: whether the patch
    kernel may run and takes these arguments (``_patch_runs``). Exact fp32 past
    ``_F32X3_MAX_K`` runs the cuDNN path wherever it may; otherwise the size rules decide."""
    pixels, cout = out_shape[0] * out_shape[2] * out_shape[3], out_shape[1]
    exact_fp32 = x.dtype == torch.float32 and not allow_tf32
    channels_last = _channels_innermost(x)
    elem = x.element_size()
    k = math.prod(weight.shape[1:])
    tiles = -(-pixels // 128) * -(-cout // (64 if cout <= 64 else 128))  # the K-table tiles
    if _f32x3_past_bound(x.dtype, allow_tf32, k) and _cudnn_runs(out_shape):
        return "cudnn"  # cuDNN's fp32 arithmetic, where 3xTF32 would lose accuracy
    cudnn = (
        _cudnn_runs(out_shape)
        and _cudnn_pays(
            weight.shape[1],
            cout,
            k,
            max(stride) > 1,
            tiles,
            sms,
            exact_fp32,
            channels_last,
            elem,
        )
    )
    # the patch kernel (TF32, 3xTF32 for exact fp32, fp16 or bf16) where its size rule says
    # it pays
    if patch_runs and _patch_pays(
        pixels, cout, k, sms, channels_last, elem, x.shape[3], exact_fp32, out_shape[3]
    ):
        return "patch"
    return "cudnn" if cudnn else "fused"
