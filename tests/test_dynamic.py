"""Dynamic shapes: one compiled graph serves every batch and image size, fused and correct."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import fx_fuse  # noqa: F401  (registers the op)
import models

OP = torch.ops.fx_fuse.conv2d_relu_add.default

# Sizes avoid 0 and 1 (which Dynamo always specializes) and, in the first shape, equal
# sizes (duck sizing would guard on H == W and recompile for the next, non-square shape).
SHAPES = [(2, 16, 12), (3, 20, 28), (5, 9, 31), (4, 33, 17), (6, 8, 8)]


class DownsampleNet(nn.Module):
    """Two sites: a stride-1 residual, and a stride-2 conv whose `other` is a strided 1x1
    conv (equal output sizes for odd and even images: ceil(H / 2)). Both fused."""

    def __init__(self, width=6):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.shortcut = nn.Conv2d(width, 2 * width, 1, stride=2)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.conv(x)) + x
        return torch.relu(self.down(x)) + self.shortcut(x)


def _compiled_graphs(model, backend, **kwargs):
    """Compile ``model``; return (compiled, list of the graphs the backend received)."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        if backend == "eager":
            return gm.forward
        from fx_fuse.backend import fx_fuse_backend

        return fx_fuse_backend(gm, example_inputs, options={"inner": "aot_eager"})

    return torch.compile(model, backend=counting_backend, **kwargs), graphs


@pytest.mark.parametrize(
    "model_cls, fused, refused", [(DownsampleNet, 2, 0), (models.UNetLike, 4, 1)]
)
def test_one_graph_for_every_size(model_cls, fused, refused):
    torch.manual_seed(0)
    model = model_cls().eval()
    compiled = torch.compile(
        model, backend="fx_fuse", dynamic=True, options={"inner": "aot_eager"}
    )
    scale = 4 if model_cls is models.UNetLike else 1  # UNetLike needs multiples of 4
    with torch.no_grad():
        for n, h, w in SHAPES:
            x = torch.randn(n, 3, h * scale, w * scale)
            torch.testing.assert_close(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["fx_fuse"]["fused"] == fused
    assert counters["fx_fuse"]["refused"] == refused


def test_the_fused_graph_is_symbolic():
    """The graph the backend rewrote has symbolic sizes and the op in it, once per site."""
    compiled, graphs = _compiled_graphs(DownsampleNet().eval(), "fx_fuse", dynamic=True)
    with torch.no_grad():
        for n, h, w in SHAPES:
            compiled(torch.randn(n, 3, h, w))
    assert len(graphs) == 1
    (gm,) = graphs
    assert sum(node.target is OP for node in gm.graph.nodes) == 2
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert any(
        isinstance(n.meta.get("example_value"), torch.SymInt) for n in placeholders
    ), "expected symbolic sizes among the graph's inputs"


def test_training_with_dynamic_shapes():
    torch.manual_seed(0)
    model = DownsampleNet()
    compiled = torch.compile(
        model, backend="fx_fuse", dynamic=True, options={"inner": "aot_eager"}
    )
    for n, h, w in SHAPES[:3]:
        x = torch.randn(n, 3, h, w)
        model.zero_grad()
        compiled(x).square().mean().backward()
        got = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model(x).square().mean().backward()
        for g, p in zip(got, model.parameters()):
            torch.testing.assert_close(g, p.grad)
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["fx_fuse"]["fused"] == 2


def test_automatic_dynamic_recompiles_as_often_as_the_eager_backend():
    """Without dynamic=True, Dynamo compiles static, then once dynamic on a size change;
    fx_fuse must not add recompilations to that."""
    model = DownsampleNet().eval()
    counts = {}
    for backend in ("eager", "fx_fuse"):
        torch._dynamo.reset()
        compiled, graphs = _compiled_graphs(model, backend)
        with torch.no_grad():
            for n, h, w in SHAPES:
                x = torch.randn(n, 3, h, w)
                torch.testing.assert_close(compiled(x), model(x))
        counts[backend] = len(graphs)
    assert counts["fx_fuse"] == counts["eager"] == 2


def test_fused_count_is_not_doubled_when_dynamo_restarts_the_compile():
    class BNThenSite(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_block = models._BNBlock(4)  # not a candidate: BN between conv and relu
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(self.bn_block(x))) + x  # one site

    model = BNThenSite().eval()
    compiled = torch.compile(
        model, backend="fx_fuse", dynamic=True, options={"inner": "aot_eager"}
    )
    with torch.no_grad():
        x = torch.randn(2, 4, 10, 6)
        torch.testing.assert_close(compiled(x), model(x))
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["fx_fuse"]["fused"] == 1
