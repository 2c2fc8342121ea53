"""The op's contract: values, fake kernel, autograd, opcheck, and every bad input."""

import re

import pytest
import torch
import torch.nn.functional as F

import fx_fuse
from fx_fuse.ops import output_memory_format

OP = torch.ops.fx_fuse.conv2d_relu_add.default

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def sample_inputs(device, dtype=torch.float64, requires_grad=False):
    """(input, weight, bias, other, stride, padding, dilation, groups) samples covering
    odd shapes, every kind of `other`, layouts, strides, paddings, dilations and groups."""

    def t(*shape, **kw):
        x = torch.randn(*shape, dtype=dtype, device=device)
        if kw.get("channels_last"):
            x = x.to(memory_format=torch.channels_last)
        return x.requires_grad_(requires_grad)

    return [
        (t(2, 3, 8, 8), t(4, 3, 3, 3), t(4), t(4, 1, 1), [1, 1], [1, 1], [1, 1], 1),
        (t(1, 1, 5, 7), t(1, 1, 3, 3), None, t(1, 1, 3, 5), [1, 1], [0, 0], [1, 1], 1),
        (t(2, 5, 9, 6), t(7, 5, 3, 1), t(7), t(2, 7, 4, 6), [2, 1], [0, 0], [1, 1], 1),
        (t(2, 4, 10, 10), t(6, 2, 3, 3), t(6), t(1, 6, 1, 1), [1, 1], [2, 2], [2, 2], 2),
        (t(2, 3, 8, 8, channels_last=True), t(4, 3, 3, 3), t(4), t(2, 4, 8, 8),
         [1, 1], [1, 1], [1, 1], 1),
        (t(2, 3, 6, 6), t(4, 3, 3, 3), None, t(6), [1, 1], [1, 1], [1, 1], 1),
        (t(3, 6, 6), t(4, 3, 3, 3), t(4), t(4, 1, 1), [1, 1], [1, 1], [1, 1], 1),
        (t(2, 3, 7, 7), t(5, 3, 2, 2), t(5), t(()), [3, 3], [1, 0], [1, 1], 1),
        (t(2, 3, 3, 3), t(2, 3, 3, 3), t(2), fx_fuse.ops.scalar_other(0.5, "cpu"),
         [1, 1], [0, 0], [1, 1], 1),
    ]


def composed(input, weight, bias, other, stride, padding, dilation, groups):
    return torch.relu(F.conv2d(input, weight, bias, stride, padding, dilation, groups)) + other


@pytest.mark.parametrize("device", DEVICES)
def test_matches_the_composition_in_float64(device):
    for sample in sample_inputs(device):
        torch.testing.assert_close(OP(*sample), composed(*sample), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for sample in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(OP, sample)


def test_gradcheck_float64():
    for sample in sample_inputs("cpu", requires_grad=True)[:4]:
        tensors = [a for a in sample[:4] if a is not None]
        rest = sample[4:]

        def f(*args, has_bias=sample[2] is not None):
            input, weight, *tail = args
            bias = tail.pop(0) if has_bias else None
            return OP(input, weight, bias, tail[0], *rest)

        assert torch.autograd.gradcheck(f, tensors, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_equal_eager(dtype):
    for sample in sample_inputs("cpu", dtype, requires_grad=True):
        leaves = [a for a in sample[:4] if a is not None and a.requires_grad]
        grad_out = torch.randn_like(composed(*sample))
        fused = torch.autograd.grad(OP(*sample), leaves, grad_out)
        eager = torch.autograd.grad(composed(*sample), leaves, grad_out)
        for a, b in zip(fused, eager):
            torch.testing.assert_close(a, b)


def test_python_wrapper_takes_ints_and_scalars():
    x, w, b = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    out = fx_fuse.conv2d_relu_add(x, w, b, 1.5, stride=2, padding=1, dilation=1)
    torch.testing.assert_close(out, torch.relu(F.conv2d(x, w, b, 2, 1)) + 1.5)


def test_scalar_other_keeps_the_output_dtype():
    x, w = torch.randn(1, 2, 5, 5, dtype=torch.bfloat16), torch.randn(3, 2, 3, 3, dtype=torch.bfloat16)
    assert fx_fuse.conv2d_relu_add(x, w, None, 2.0).dtype == torch.bfloat16


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_output_memory_format_follows_the_input(fmt):
    x = torch.randn(2, 3, 8, 8).to(memory_format=fmt)
    w = torch.randn(4, 3, 3, 3)
    out = OP(x, w, None, torch.randn(4, 1, 1), [1, 1], [1, 1], [1, 1], 1)
    eager = composed(x, w, None, torch.randn(4, 1, 1), [1, 1], [1, 1], [1, 1], 1)
    assert out.is_contiguous(memory_format=fmt)
    assert out.stride() == eager.stride()
    assert output_memory_format(x, w) == fmt


def test_fake_kernel_matches_under_symbolic_shapes():
    def f(x, w, o):
        return OP(x, w, None, o, [1, 1], [1, 1], [1, 1], 1)

    compiled = torch.compile(f, backend="aot_eager", dynamic=True, fullgraph=True)
    for n, h in [(1, 6), (3, 9), (2, 13)]:
        x, w, o = torch.randn(n, 3, h, h + 1), torch.randn(4, 3, 3, 3), torch.randn(4, 1, 1)
        torch.testing.assert_close(compiled(x, w, o), f(x, w, o))


def _args(**overrides):
    args = dict(
        input=torch.randn(2, 3, 8, 8), weight=torch.randn(4, 3, 3, 3), bias=torch.randn(4),
        other=torch.randn(4, 1, 1), stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1,
    )
    args.update(overrides)
    return list(args.values())


BAD_INPUTS = {
    "input rank": (_args(input=torch.randn(2, 2, 3, 8, 8)), ["`input`", "4-D", "5-D"]),
    "weight rank": (_args(weight=torch.randn(4, 3, 3)), ["`weight`", "4-D", "3-D"]),
    "weight channels": (_args(weight=torch.randn(4, 2, 3, 3)), ["`input`", "channels", "got 3"]),
    "groups": (_args(weight=torch.randn(4, 2, 3, 3), groups=3), ["divisible by groups"]),
    "bias length": (_args(bias=torch.randn(5)), ["`bias`", "[4]", "[5]"]),
    "bias rank": (_args(bias=torch.randn(4, 1)), ["`bias`", "[4]", "[4, 1]"]),
    "other shape": (_args(other=torch.randn(3, 2, 4, 8, 8)), ["`other`", "[2, 4, 8, 8]"]),
    "other not broadcastable": (_args(other=torch.randn(5, 1, 1)), ["`other`", "[5, 1, 1]"]),
    "other promotes": (_args(other=torch.randn(4, 1, 1, dtype=torch.float64)),
                       ["`other`", "float64", "float32"]),
    "dtype mismatch": (_args(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)),
                       ["`weight`", "float32", "float64"]),
    "integer input": (_args(input=torch.ones(2, 3, 8, 8, dtype=torch.int64)),
                      ["`input`", "floating", "int64"]),
    "stride": (_args(stride=[0, 1]), ["`stride`", "[0, 1]"]),
    "stride length": (_args(stride=[1, 1, 1]), ["`stride`", "[1, 1, 1]"]),
    "too small": (_args(input=torch.randn(2, 3, 2, 2), padding=[0, 0]),
                  ["`input`", "kernel size can't be greater than actual input size"]),
    "other not a tensor": (_args(other=[1.0]), ["'other'", "Tensor", "list"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error(case):
    args, fragments = BAD_INPUTS[case]
    with pytest.raises(Exception) as info:
        OP(*args)
    message = str(info.value)
    assert "fx_fuse::conv2d_relu_add" in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("case", ["other shape", "dtype mismatch", "bias length"])
def test_bad_input_raises_under_fake_tensors_too(case):
    args, fragments = BAD_INPUTS[case]
    compiled = torch.compile(lambda *a: OP(*a), backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match=re.escape(fragments[0])):
        compiled(*args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_tensors_on_different_devices():
    with pytest.raises(RuntimeError, match="`weight` on the device of `input`"):
        OP(*_args(weight=torch.randn(4, 3, 3, 3, device="cuda")))
    with pytest.raises(RuntimeError, match="`other` on the device of `input`"):
        OP(*_args(other=torch.randn(4, 1, 1, device="cuda")))
