"""The CUDA implementation of ``fx_fuse::conv2d_relu_add``: prepares the tensors and calls
the fused kernel (``kernels/``, built on first use by ``_build``); where the measured size
rules find it faster, cuDNN's convolution followed by one fused bias + relu + add pass (the
cuDNN path, ``_path``); or the reference (ATen) composition for the cases the kernels do not
cover, announced once per reason.

Arguments arrive validated by ``ops.check_args`` (stride / padding / dilation normalized to
2-element lists).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Dict, Optional, Set

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

from . import _build, ops

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# dtypes of `other` the kernel reads directly; anything else is converted to fp32 first
_OTHER_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT32_MAX = 2**31 - 1

_warned: Set[str] = set()
_properties: Dict[int, Any] = {}


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


def _patch_pays(pixels: int, cout: int, k: int, sms: int) -> bool:
    """The size rule for the patch kernel: its tiles are 256 output pixels x 128 channels on
    a persistent grid of one CTA per SM, so it runs where the tiles are mostly full (more
    than 64 output channels), there are at least 4 of them per SM (fewer leave SMs idle or
    unevenly loaded), and K = C_in x kH x kW is below 1024 (beyond, the conv's arithmetic
    outweighs the output pass the fused kernel saves, and cuDNN multiplies faster).
    Measured on the H100 (ms, patch against the K-table kernel): the headline 128 x 128 x
    126 x 126 output 1.84 / 1.95 (fp32), 1.18 / 1.84 (bf16); a 56 px layer with 64
    channels (448 tiles) 0.29 / 0.17; a 14 px one with 256 channels (64 tiles) 0.16 / 0.14.
    Against the cuDNN path (GPU ms, v14): K = 576, 56 px, 128 channels 0.403 / 0.531; K =
    1152, 28 px, batch 256 0.396 / 0.383 (bf16 0.494 / 0.225); K = 2304, 14 px, batch 512
    1.120 / 0.504."""
    tiles = -(-pixels // 256) * -(-cout // 128)
    return cout > 64 and tiles >= 4 * sms and k < 1024


def _cudnn_enabled() -> bool:
    """Whether the cuDNN path may run: unless FX_FUSE_DISABLE_CUDNN=1 asks for the fused
    kernels everywhere (for comparisons and tests)."""
    return os.environ.get("FX_FUSE_DISABLE_CUDNN") != "1"


def _cudnn_pays(
    cin: int, k: int, strided: bool, tiles: int, sms: int, exact_fp32: bool, channels_last: bool
) -> bool:
    """The size rule for the cuDNN path (cuDNN's convolution without bias, then one bias +
    relu + add pass). ``k`` = C_in x kH x kW; ``tiles``: the K-table kernel's tiles of 128
    pixels x 64 (C_out <= 64) or 128 channels; ``channels_last``: the input's layout.

    Never below 16 input channels (cuDNN's tensor-core kernels pad them; the K-table kernel
    wins). Otherwise cuDNN for channels-last input (its sm90 channels-last kernels beat the
    patch kernel too), for exact fp32 (3xTF32 on the K-table kernel is slower than cuDNN's
    fp32), where the K-table tiles do not fill one wave of the SMs (no split-K), and where
    the conv is compute-heavy at stride 1: K >= 1024, or K >= 512 unless the problem is
    large (64 tiles per SM: there the K-table kernel's single pass over the output wins).
    Measured on the H100, GPU ms, fused kernel / cuDNN path (``benchmarks/bench_paths.py``,
    docs/performance.md v14 and v15): channels-last headline 1.762 /
    1.624 (bf16 1.006 / 0.844); exact-fp32 headline 10.68 / 7.80; ResNet 3x3 layers at
    batch 32, 56 px 0.164 / 0.100, 28 px 0.083 / 0.055, 14 px 0.097 / 0.046, 7 px 0.351 /
    0.063; kept on the fused kernels: the headline with 64 output channels (120 tiles per SM)
    1.724 / 1.819, a strided 28 px layer 0.051 / 0.058, a 1x1 (K = 256) 0.059 / 0.066, 8
    input channels 0.042 / 0.064 (and 16 channels, K = 144: 0.064 / 0.059, the one shape of
    the 24 measured where the rule picks the slower path)."""
    if cin < 16:
        return False
    compute_heavy = not strided and (k >= 1024 or (k >= 512 and tiles < 64 * sms))
    return channels_last or exact_fp32 or tiles < sms or compute_heavy


def unsupported_reason(input: Tensor, weight: Tensor, groups: int) -> Optional[str]:
    """Why the fused kernel cannot run these arguments, or None when it can."""
    if input.dtype not in _KERNEL_DTYPES:
        return f"the fused kernel does not handle {input.dtype}"
    if groups != 1:
        return "the fused kernel does not handle groups > 1"
    if _device_capability(input.device) < (8, 0):
        return "the fused kernel needs a GPU of compute capability 8.0 or newer"
    if weight.shape[1] == 0:
        return "the fused kernel does not handle zero input channels"
    return None


def conv2d_relu_add(input, weight, bias, other, stride, padding, dilation, groups) -> Tensor:
    reason = unsupported_reason(input, weight, groups)
    if reason is None and (
        dilation[0] * (weight.shape[2] - 1) > 32767 or dilation[1] * (weight.shape[3] - 1) > 32767
    ):
        reason = "the fused kernel does not handle a dilated kernel extent over 32767"
    if reason is not None:
        _warn_once(reason)
        return ops.reference(input, weight, bias, other, stride, padding, dilation, groups)

    out_format = ops.output_memory_format(input, weight)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    # Read the input in its own layout (NCHW or channels-last), made dense in it explicitly.
    x = x.contiguous(memory_format=suggest_memory_format(x))
    if _max_image_offset(x, weight, padding, dilation) > _INT32_MAX:
        _warn_once("the fused kernel does not handle an input image of 2^31 or more elements")
        return ops.reference(input, weight, bias, other, stride, padding, dilation, groups)

    out_shape = ops.output_shape(x, weight, stride, padding, dilation)
    other_t, scalar = _other_operand(other, out_shape)
    bias = bias if bias is None else bias.contiguous()
    allow_tf32 = bool(torch.backends.cudnn.allow_tf32)
    path = _path(x, weight, out_shape, stride, allow_tf32)
    if path == "cudnn":
        out = _cudnn_conv_relu_add(
            x, weight, bias, other_t, scalar, stride, padding, dilation, out_format
        )
    else:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device, memory_format=out_format)
        if out.numel() > 0:
            _build.load().conv2d_relu_add_out(
                x,
                weight,
                bias,
                other_t,
                scalar,
                list(stride),
                list(padding),
                list(dilation),
                allow_tf32,
                _use_wgmma(x.device),
                path == "patch",
                out,
            )
    return out.squeeze(0) if unbatched else out


def _path(x: Tensor, weight: Tensor, out_shape, stride, allow_tf32: bool) -> str:
    """Which implementation runs: "patch" (the patch kernel, where the binding finds that its
    alignment and fit requirements hold; else the K-table kernels), "cudnn" (cuDNN's
    convolution and one epilogue pass) or "fused" (the K-table kernels). ``x`` is dense in
    its layout (NCHW or channels-last)."""
    sms = _device_properties(x.device).multi_processor_count
    pixels, cout = out_shape[0] * out_shape[2] * out_shape[3], out_shape[1]
    exact_fp32 = x.dtype == torch.float32 and not allow_tf32
    channels_last = x.shape[1] > 1 and x.stride(1) == 1
    k = math.prod(weight.shape[1:])
    tiles = -(-pixels // 128) * -(-cout // (64 if cout <= 64 else 128))  # the K-table tiles
    cudnn = (
        _cudnn_enabled()
        and math.prod(out_shape[1:]) < _INT32_MAX  # the epilogue pass's per-image index
        and _cudnn_pays(
            weight.shape[1],
            k,
            max(stride) > 1,
            tiles,
            sms,
            exact_fp32,
            channels_last,
        )
    )
    # the patch kernel: TF32, fp16 or bf16 (not 3xTF32) where its size rule says it pays;
    # on channels-last input cuDNN's kernels are faster still
    patch = _patch_enabled() and not exact_fp32 and _patch_pays(pixels, cout, k, sms)
    if patch and not (cudnn and channels_last):
        return "patch"
    return "cudnn" if cudnn else "fused"


def _other_operand(other: Tensor, out_shape) -> tuple:
    """``other`` as the kernels read it: a tensor expanded to the output's shape, or (a
    0-dim CPU tensor; Python numbers arrive as 0-dim float64) a number read on the host,
    without a device sync."""
    if other.device.type != "cuda":
        return None, float(other.item())
    if other.dtype not in _OTHER_DTYPES:
        other = other.to(torch.float32)
    return other.expand(out_shape), 0.0


def _cudnn_conv_relu_add(
    x, weight, bias, other_t, scalar, stride, padding, dilation, out_format
) -> Tensor:
    """The cuDNN path: the convolution by cuDNN (as ``F.conv2d`` runs it, in the input's
    dtype and TF32 setting), without its bias (cuDNN adds a channels-last bias in a pass of
    its own), then one pass of relu(y + bias) + other over its output, in place where it is
    already in the op's output format. ``bias`` is contiguous."""
    with ops.autocast_disabled(x.device):
        y = F.conv2d(x, weight, None, stride, padding, dilation)
    out = y if y.is_contiguous(memory_format=out_format) else torch.empty_like(
        y, memory_format=out_format
    )
    _build.load().relu_add_out(y, bias, other_t, scalar, out)
    return out
