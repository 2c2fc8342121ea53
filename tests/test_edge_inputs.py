"""Edge inputs on the CPU: empty batch, images smaller than the kernel, NaN/Inf, huge values.

Each case runs through the op itself and through the backend, and is compared with eager
PyTorch on the same inputs."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters

import fx_fuse

OP = torch.ops.fx_fuse.conv2d_relu_add.default


class Site(nn.Module):
    """One site, relu(conv(x)) + shift, with a per-channel parameter `shift`."""

    def __init__(self, c_in=3, c_out=4, k=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=padding)
        self.shift = nn.Parameter(torch.randn(c_out, 1, 1))

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.shift


class ResidualSite(Site):
    """One site, relu(conv(x)) + other, with `other` a full residual passed in."""

    def forward(self, x, other):
        return torch.relu(self.conv(x)) + other


def eager(x, w, b, other, stride=1, padding=1):
    return torch.relu(F.conv2d(x, w, b, stride, padding)) + other


def op(x, w, b, other, stride=1, padding=1):
    return OP(x, w, b, other, [stride], [padding], [1], 1)


def compiled(model, inner="aot_eager"):
    return torch.compile(model, backend="fx_fuse", options={"inner": inner}, fullgraph=True)


# ---------------------------------------------------------------------------------------
# Empty batch


@pytest.mark.parametrize("other_shape", [(4, 1, 1), (0, 4, 7, 9)])
def test_empty_batch_through_the_op(other_shape):
    x, w, b = torch.randn(0, 3, 7, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    other = torch.randn(other_shape)
    got, want = op(x, w, b, other), eager(x, w, b, other)
    assert got.shape == want.shape == (0, 4, 7, 9)
    assert got.dtype == want.dtype


def test_empty_batch_backward_gives_zero_parameter_gradients():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    other = torch.randn(4, 1, 1, requires_grad=True)
    x = torch.randn(0, 3, 7, 9, requires_grad=True)
    op(x, w, b, other).sum().backward()
    got = [t.grad for t in (x, w, b, other)]
    for t in (x, w, b, other):
        t.grad = None
    eager(x, w, b, other).sum().backward()
    for g, t in zip(got, (x, w, b, other)):
        assert g is not None and g.shape == t.shape
        torch.testing.assert_close(g, t.grad)
    assert not w.grad.any() and not other.grad.any()  # nothing to sum over


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_empty_batch_through_the_backend(inner):
    model, x = Site().eval(), torch.randn(0, 3, 7, 9)
    with torch.no_grad():
        got, want = compiled(model, inner)(x), model(x)
    assert got.shape == want.shape == (0, 4, 7, 9)
    assert counters["fx_fuse"]["fused"] == 1


@pytest.mark.parametrize("trace", ["export", "symbolic_trace"])
def test_empty_batch_through_fuse(trace):
    model, x = Site().eval(), torch.randn(0, 3, 7, 9)
    if trace == "export":
        gm = fx_fuse.fuse(torch.export.export(model, (x,)).module())
    else:
        gm = fx_fuse.fuse(model, x)
    assert sum(n.target is OP for n in gm.graph.nodes) == 1
    with torch.no_grad():
        assert gm(x).shape == model(x).shape == (0, 4, 7, 9)


# ---------------------------------------------------------------------------------------
# Images smaller than the kernel


@pytest.mark.parametrize("size, padding", [((2, 2), 0), ((1, 5), 0), ((5, 1), 0)])
def test_image_smaller_than_the_kernel_raises_like_eager(size, padding):
    x, w, b, other = torch.randn(1, 3, *size), torch.randn(4, 3, 3, 3), torch.randn(4), 0.0
    with pytest.raises(RuntimeError, match="(?i)kernel size can't be greater than actual"):
        eager(x, w, b, torch.tensor(other), padding=padding)
    with pytest.raises(RuntimeError, match=r"fx_fuse::conv2d_relu_add: `input` is too small"):
        op(x, w, b, torch.tensor(other), padding=padding)


def test_image_smaller_than_the_kernel_raises_under_the_backend():
    model = Site(padding=0).eval()
    x = torch.randn(1, 3, 2, 2)
    with pytest.raises(RuntimeError, match="(?i)kernel size can't be greater than actual"):
        model(x)
    with pytest.raises(Exception, match="(?i)kernel size can't be greater than actual"):
        compiled(model)(x)
    # A graph fused ahead of time (no shapes known) meets the small image in the op.
    gm = fx_fuse.fuse(model)
    assert sum(n.target is OP for n in gm.graph.nodes) == 1
    with pytest.raises(RuntimeError, match=r"fx_fuse::conv2d_relu_add: `input` is too small"):
        gm(x)


def test_padding_makes_a_small_image_valid():
    """A 2x2 image with a 3x3 kernel and padding 1 is valid in eager, and so in the op."""
    x, w, b, other = torch.randn(1, 3, 2, 2), torch.randn(4, 3, 3, 3), torch.randn(4), 0.5
    torch.testing.assert_close(op(x, w, b, torch.tensor(other)), eager(x, w, b, other))


# ---------------------------------------------------------------------------------------
# NaN, Inf, very large values


def _poisoned():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4)
    other = torch.randn(2, 4, 6, 6)
    x[0, 1, 2, 3] = math.nan
    x[1, 0, 0, 0] = math.inf
    x[1, 2, 5, 5] = -math.inf
    other[0, 3, 0, 0] = math.nan
    other[1, 2, 1, 1] = math.inf
    return x, w, b, other


def test_nan_and_inf_propagate_as_in_eager():
    x, w, b, other = _poisoned()
    got, want = op(x, w, b, other), eager(x, w, b, other)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.isnan(got).any() and torch.isinf(got).any()


def test_nan_and_inf_propagate_as_in_eager_under_the_backend():
    model = ResidualSite().eval()
    x, _, _, other = _poisoned()
    with torch.no_grad():
        got, want = compiled(model)(x, other), model(x, other)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert torch.isnan(got).any()
    assert counters["fx_fuse"]["fused"] == 1


def test_relu_of_nan_is_nan_not_zero():
    """A NaN bias makes its channel's conv output NaN everywhere; relu(nan) is nan, so
    that whole output channel is NaN whatever `other` is, and the others are finite."""
    x, w, b, other = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3), torch.randn(4), 1.0
    b[2] = math.nan
    want = eager(x, w, b, other)
    assert torch.isnan(want[:, 2]).all()  # eager's contract, checked independently
    for got in (op(x, w, b, torch.tensor(other)), fx_fuse.conv2d_relu_add(x, w, b, other, 1, 1)):
        assert torch.isnan(got[:, 2]).all()
        assert torch.isfinite(got[:, [0, 1, 3]]).all()
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("scale", [1e30, -1e30])
def test_very_large_values_behave_as_in_eager(scale):
    """Inputs near 1e30 in fp32: finite products (1e30 * O(1) weights) stay finite and
    equal eager's; 1e30 * 1e10 weights overflow to +-inf, relu(-inf) = 0, and inf + -inf
    in the add gives NaN, all as in eager."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6) * scale
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    other = torch.randn(4, 1, 1)
    want = eager(x, w, b, other)
    assert torch.isfinite(want).all() and want.abs().max() > 1e29
    torch.testing.assert_close(op(x, w, b, other), want)

    w_huge = w * 1e10
    other_inf = torch.full((4, 1, 1), -math.inf)
    other_inf[0] = 1.0
    want = eager(x, w_huge, b, other_inf)
    got = op(x, w_huge, b, other_inf)
    assert torch.isinf(want).any() and torch.isnan(want).any()
    torch.testing.assert_close(got, want, equal_nan=True)


def test_very_large_values_under_the_backend():
    model = Site().eval()
    with torch.no_grad():
        model.conv.weight.mul_(1e10)
        x = torch.randn(2, 3, 6, 6) * 1e30
        got, want = compiled(model)(x), model(x)
    assert torch.isinf(want).any()
    torch.testing.assert_close(got, want, equal_nan=True)
    assert counters["fx_fuse"]["fused"] == 1
