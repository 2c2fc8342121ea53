"""Autocast regions and dtype conversions between the conv, the relu and the add.

The fused op computes in the add's result dtype, so the output's dtype is eager's; the
values differ from eager by the roundings of the lower-precision intermediates only.
"""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import fx_fuse
from fx_fuse import rewrite as rw

OP = torch.ops.fx_fuse.conv2d_relu_add.default
BF16_TOL = dict(atol=3e-2, rtol=3e-2)


class Chain(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bias = nn.Parameter(torch.randn(16, 1, 1))
        self.body = body

    def forward(self, x, y):
        return self.body(self, x, y)


def autocast_per_channel(m, x, y):  # relu(bf16 conv) + fp32 (C,1,1): a float32 result
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.relu(m.conv(x)) + m.bias


def autocast_scalar(m, x, y):  # relu(bf16 conv) + 1.0: a bfloat16 result
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return torch.relu(m.conv(x)) + 1.0


def cast_after_relu(m, x, y):
    return torch.relu(m.conv(x)).to(torch.bfloat16) + y.bfloat16()


def cast_before_relu(m, x, y):
    return torch.relu(m.conv(x).double()) + y.double()


def cast_both_sides(m, x, y):
    return torch.relu(m.conv(x).half()).float() + y


BODIES = [autocast_per_channel, autocast_scalar, cast_after_relu, cast_before_relu,
          cast_both_sides]


def ops_in(gm):
    return sum(n.target is OP for g in gm.modules() if isinstance(g, torch.fx.GraphModule)
               for n in g.graph.nodes)


def inputs():
    torch.manual_seed(0)
    return torch.randn(2, 8, 10, 10), torch.randn(2, 16, 10, 10)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.__name__)
@torch.no_grad()
def test_compile_fuses_through_conversions(body):
    model, (x, y) = Chain(body), inputs()
    expected = model(x, y)
    out = torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"})(x, y)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out.float(), expected.float(), **BF16_TOL)
    assert dict(counters["fx_fuse"]) == {"fused": 1, "refused": 0}


@pytest.mark.parametrize("body", BODIES, ids=lambda b: b.__name__)
@torch.no_grad()
def test_export_fuses_through_conversions(body):
    """export keeps autocast regions as higher-order ops whose bodies are fused too."""
    model, (x, y) = Chain(body), inputs()
    expected = model(x, y)
    gm = fx_fuse.fuse(torch.export.export(model, (x, y)).module())
    assert ops_in(gm) == 1
    out = gm(x, y)
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out.float(), expected.float(), **BF16_TOL)


@pytest.mark.parametrize("body", [cast_after_relu, cast_before_relu, cast_both_sides],
                         ids=lambda b: b.__name__)
@torch.no_grad()
def test_symbolic_trace_needs_example_inputs_to_fuse_conversions(body):
    model, (x, y) = Chain(body), inputs()
    expected = model(x, y)
    blind = torch.fx.symbolic_trace(model)
    assert [s.reason for s in rw.rewrite(blind)] == ["conversion_dtype_is_unknown"]
    gm = fx_fuse.fuse(model, x, y)
    assert ops_in(gm) == 1
    torch.testing.assert_close(gm(x, y).float(), expected.float(), **BF16_TOL)


def test_op_ignores_an_enclosing_autocast():
    """The rewrite picks the op's dtype; autocast must not recast the convs inside it."""
    x, w, o = torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3), torch.randn(4, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = OP(x, w, None, o, [1, 1], [1, 1], [1, 1], 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.relu(torch.conv2d(x, w, None, 1, 1)) + o)
