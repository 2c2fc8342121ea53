"""The custom op ``fx_fuse::conv2d_relu_add``: schema, checks, fake kernel, autograd and
reference kernel; CUDA tensors go to the fused kernels (``_cuda``, which registers their
C++ implementation as the op's CUDA and AutogradCUDA kernels on the first CUDA call).

``conv2d_relu_add(input, weight, bias, other, stride, padding, dilation, groups)``
computes ``relu(conv2d(input, weight, bias, stride, padding, dilation, groups)) + other``
where ``other`` broadcasts to the conv output without changing its shape or dtype.
"""

from __future__ import annotations

import contextlib
import operator
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._prims_common import suggest_memory_format

OP_NAME = "fx_fuse::conv2d_relu_add"

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(msg: str) -> str:
    return f"{OP_NAME}: {msg}"


def _check(cond, msg) -> None:
    """``torch._check`` with the op's name in front of the message. A condition that is
    already ``True`` (concrete sizes, the common case on every call) returns at once: only a
    failure or a symbolic condition needs ``torch._check``."""
    if cond is True:
        return
    torch._check(cond, lambda: _fail(msg()))


def _pair(name: str, values: Sequence[int]) -> List[int]:
    values = list(values)
    _check(
        len(values) in (1, 2),
        lambda: f"expected `{name}` to have 1 or 2 elements, got {values}",
    )
    return values * 2 if len(values) == 1 else values


def _type_category(dtype: torch.dtype) -> int:
    if dtype == torch.bool:
        return 0
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    return 1


def add_result_dtype(
    out_dtype: torch.dtype, other_ndim: int, other_dtype: torch.dtype
) -> torch.dtype:
    """The dtype of ``out + other`` under PyTorch's promotion rules, ``out`` not 0-dim."""
    if other_ndim == 0 and _type_category(other_dtype) <= _type_category(out_dtype):
        return out_dtype
    return torch.promote_types(out_dtype, other_dtype)


def output_shape(input: Tensor, weight: Tensor, stride, padding, dilation) -> List:
    """Shape of the conv output (symbolic sizes allowed)."""
    spatial = []
    for i in range(2):
        size = input.shape[-2 + i]
        k = weight.shape[2 + i]
        spatial.append((size + 2 * padding[i] - dilation[i] * (k - 1) - 1) // stride[i] + 1)
    if input.dim() == 3:
        return [weight.shape[0], *spatial]
    return [input.shape[0], weight.shape[0], *spatial]


def output_memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The memory format of the output: channels_last when the input or the weight is
    channels_last, as PyTorch's own convolutions decide."""
    if input.dim() == 4 and torch.channels_last in (
        suggest_memory_format(input),
        suggest_memory_format(weight),
    ):
        return torch.channels_last
    return torch.contiguous_format


def check_args(input, weight, bias, other, stride, padding, dilation, groups):
    """Validate the op's arguments; return normalized (stride, padding, dilation)."""
    _check(
        isinstance(input, Tensor) and input.dim() in (3, 4),
        lambda: "expected `input` to be a 4-D (N, C, H, W) or 3-D (C, H, W) tensor, "
        f"got {_describe(input)}",
    )
    _check(
        isinstance(weight, Tensor) and weight.dim() == 4,
        lambda: f"expected `weight` to be a 4-D (C_out, C_in/groups, kH, kW) tensor, "
        f"got {_describe(weight)}",
    )
    _check(
        input.dtype in _FLOAT_DTYPES,
        lambda: f"expected `input` of a floating dtype {_FLOAT_DTYPES}, got {input.dtype}",
    )
    _check(
        weight.dtype == input.dtype,
        lambda: f"expected `weight` to have the dtype of `input` ({input.dtype}), "
        f"got {weight.dtype}",
    )
    _check(
        weight.device == input.device,
        lambda: f"expected `weight` on the device of `input` ({input.device}), "
        f"got {weight.device}",
    )
    stride = _pair("stride", stride)
    padding = _pair("padding", padding)
    dilation = _pair("dilation", dilation)
    _check(all(s > 0 for s in stride), lambda: f"expected `stride` > 0, got {stride}")
    _check(all(p >= 0 for p in padding), lambda: f"expected `padding` >= 0, got {padding}")
    _check(all(d > 0 for d in dilation), lambda: f"expected `dilation` > 0, got {dilation}")
    _check(groups > 0, lambda: f"expected `groups` > 0, got {groups}")
    c_in = input.shape[-3]
    c_out = weight.shape[0]
    _check(
        c_out % groups == 0,
        lambda: f"expected `weight`'s out_channels ({c_out}) divisible by groups ({groups})",
    )
    _check(
        c_in == weight.shape[1] * groups,
        lambda: f"expected `input` to have weight.shape[1] * groups = "
        f"{weight.shape[1]} * {groups} = {weight.shape[1] * groups} channels, "
        f"got {c_in} (input shape {list(input.shape)})",
    )
    if bias is not None:
        _check(
            bias.dim() == 1 and bias.shape[0] == c_out,
            lambda: f"expected `bias` of shape [{c_out}] (one per output channel), "
            f"got shape {list(bias.shape)}",
        )
        _check(
            bias.dtype == input.dtype,
            lambda: f"expected `bias` to have the dtype of `input` ({input.dtype}), "
            f"got {bias.dtype}",
        )
        _check(
            bias.device == input.device,
            lambda: f"expected `bias` on the device of `input` ({input.device}), "
            f"got {bias.device}",
        )
    for i, axis in enumerate("HW"):
        padded = input.shape[-2 + i] + 2 * padding[i]
        extent = dilation[i] * (weight.shape[2 + i] - 1) + 1
        _check(
            padded >= extent,
            lambda: f"`input` is too small: padded size {axis} = {padded} is smaller than "
            f"the dilated kernel ({extent}); kernel size can't be greater than actual "
            f"input size",
        )
    _check_other(input, weight, other, stride, padding, dilation)
    return stride, padding, dilation


def _check_other(input, weight, other, stride, padding, dilation) -> None:
    _check(
        isinstance(other, Tensor),
        lambda: f"expected `other` to be a Tensor, got {type(other).__name__}",
    )
    _check(
        other.device == input.device or (other.dim() == 0 and other.device.type == "cpu"),
        lambda: f"expected `other` on the device of `input` ({input.device}) or a 0-dim "
        f"CPU tensor, got a {other.dim()}-D tensor on {other.device}",
    )
    out_shape = output_shape(input, weight, stride, padding, dilation)
    _check(
        broadcasts_to(other.shape, out_shape),
        lambda: f"expected `other` to broadcast to the conv output's shape "
        f"{list(out_shape)} without changing it, got shape {list(other.shape)}",
    )
    result = add_result_dtype(input.dtype, other.dim(), other.dtype)
    _check(
        result == input.dtype,
        lambda: f"expected `other` not to change the output dtype ({input.dtype}), "
        f"got {other.dtype}, which promotes the result to {result}",
    )


def broadcasts_to(shape, target, same=operator.eq) -> bool:
    """``shape`` broadcasts to ``target`` without changing it; ``same`` compares sizes (the
    rewrite passes one that never adds guards on symbolic sizes)."""
    if len(shape) > len(target):
        return False
    return all(same(s, 1) or same(s, t) for s, t in zip(reversed(shape), reversed(target)))


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dim()}-D tensor of shape {list(x.shape)}"
    return f"{type(x).__name__}"


def autocast_disabled(device: torch.device):
    """The op computes in its inputs' dtype whatever autocast says: the rewrite has already
    chosen that dtype, so the ATen convs it calls must not be autocast again."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def reference(input, weight, bias, other, stride, padding, dilation, groups) -> Tensor:
    """relu(conv2d(...)) + other from ATen ops, written straight into an output of the
    op's memory format. Runs on every device."""
    with autocast_disabled(input.device):
        conv = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    out = torch.empty(
        conv.shape,
        dtype=conv.dtype,
        device=conv.device,
        memory_format=output_memory_format(input, weight),
    )
    return torch.add(torch.relu_(conv), other, out=out)


@torch.library.custom_op(OP_NAME, mutates_args=())
def _conv2d_relu_add(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    other: Tensor,
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
) -> Tensor:
    if input.device.type == "cuda":
        # The first CUDA call builds the kernels and registers their C++ implementation as
        # the op's CUDA (and AutogradCUDA) kernel: later CUDA calls go straight to it.
        from . import _cuda

        return _cuda.conv2d_relu_add(input, weight, bias, other, stride, padding, dilation, groups)
    stride, padding, dilation = check_args(
        input, weight, bias, other, stride, padding, dilation, groups
    )
    return reference(input, weight, bias, other, stride, padding, dilation, groups)


@_conv2d_relu_add.register_fake
def _fake(input, weight, bias, other, stride, padding, dilation, groups):
    stride, padding, dilation = check_args(
        input, weight, bias, other, stride, padding, dilation, groups
    )
    return torch.empty(
        output_shape(input, weight, stride, padding, dilation),
        dtype=input.dtype,
        device=input.device,
        memory_format=output_memory_format(input, weight),
    )


# Autograd. The forward saves its inputs (references, no copies) and nothing else, so a
# forward in grad mode costs what it costs under no_grad; backward recomputes the conv
# once to know where relu was active, which is exact in every dtype (``out - other``
# would lose the sign of small activations next to a large ``other``). On CUDA the same
# is done by the C++ autograd kernel (kernels/op.cpp), which calls ``grads``.


def _setup_context(ctx, inputs, output):
    input, weight, bias, other, stride, padding, dilation, groups = inputs
    saved_bias = bias if bias is not None else torch.empty(0)
    ctx.save_for_backward(input, weight, saved_bias)
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.other_meta = (other.shape, other.dtype, other.device)


def _backward(ctx, grad):
    input, weight, bias = ctx.saved_tensors
    bias = bias if ctx.has_bias else None
    needs = ctx.needs_input_grad[:4]
    grad_args = grads(grad, input, weight, bias, *ctx.conv_args, *ctx.other_meta, needs)
    return (*grad_args, None, None, None, None)


def grads(
    grad, input, weight, bias, stride, padding, dilation, groups, other_shape, other_dtype,
    other_device, needs,
):
    """The gradients of ``input``, ``weight``, ``bias`` and ``other`` (None where ``needs``,
    four flags, does not ask for one) from the output's gradient ``grad``."""
    stride = _pair("stride", stride)
    padding = _pair("padding", padding)
    dilation = _pair("dilation", dilation)
    needs_input, needs_weight, needs_bias, needs_other = needs
    grad_input = grad_weight = grad_bias = grad_other = None
    if needs_input or needs_weight or needs_bias:
        unbatched = input.dim() == 3
        batched_input = input.unsqueeze(0) if unbatched else input
        batched_grad = grad.unsqueeze(0) if unbatched else grad
        with torch.no_grad(), autocast_disabled(input.device):
            conv = F.conv2d(batched_input, weight, bias, stride, padding, dilation, groups)
        grad_conv = torch.ops.aten.threshold_backward(batched_grad, conv, 0)
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_conv,
            batched_input,
            weight,
            [weight.shape[0]] if bias is not None else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [needs_input, needs_weight, needs_bias and bias is not None],
        )
        if unbatched and grad_input is not None:
            grad_input = grad_input.squeeze(0)
    if needs_other:
        grad_other = grad.sum_to_size(other_shape).to(other_device, other_dtype)
    return grad_input, grad_weight, grad_bias, grad_other


_conv2d_relu_add.register_autograd(_backward, setup_context=_setup_context)


def _as_list(value: Union[int, Sequence[int]]) -> List[int]:
    return [value] if isinstance(value, int) else list(value)


def conv2d_relu_add(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    other: Union[Tensor, float],
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
) -> Tensor:
    """``relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups)) + other``
    in one fused kernel on CUDA (the reference composition elsewhere).

    ``other`` is a tensor that broadcasts to the conv output without changing its shape
    or dtype (per-channel ``(C, 1, 1)``, a full residual, a 0-dim tensor) or a Python
    number. fp32 runs on TF32 tensor cores when ``torch.backends.cudnn.allow_tf32`` is
    True, as ``nn.Conv2d`` does.
    """
    if not isinstance(other, Tensor):
        other = scalar_other(other, input.device)
    return torch.ops.fx_fuse.conv2d_relu_add.default(
        input,
        weight,
        bias,
        other,
        _as_list(stride),
        _as_list(padding),
        _as_list(dilation),
        groups,
    )


def scalar_other(value, device=None) -> Tensor:
    """A Python number as the op's ``other``: a 0-dim float64 tensor, which (being 0-dim)
    adds like the number itself and never changes the output dtype."""
    if isinstance(value, complex):
        return torch.tensor(value, device=device)
    return torch.scalar_tensor(value, dtype=torch.float64, device=device)
