"""The torch.compile backend: entry point, inner compilers, counters, graph breaks."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import fx_fuse

OP = torch.ops.fx_fuse.conv2d_relu_add.default


class TwoSites(nn.Module):
    """Two fusable sites and one refused (the relu output is also returned)."""

    def __init__(self, graph_break=False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.bias = nn.Parameter(torch.randn(8, 1, 1))
        self.graph_break = graph_break

    def forward(self, x):
        y = torch.relu(self.conv1(x)) + self.bias
        if self.graph_break:
            torch._dynamo.graph_break()
        z = torch.relu(self.conv2(y)) + y
        r = torch.relu(self.conv3(z))
        return r + 1.0, r


@pytest.mark.parametrize("inner", ["eager", "aot_eager", "inductor"])
def test_each_inner_compiler_fuses_and_matches_eager(inner):
    model, x = TwoSites().eval(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="fx_fuse", options={"inner": inner}, fullgraph=True)
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want)
    assert counters["fx_fuse"]["fused"] == 2
    assert counters["fx_fuse"]["refused"] == 1


class ConvReluAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bias = nn.Parameter(torch.randn(8, 1, 1))

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.bias


@pytest.mark.parametrize(
    "model,options,inductor",
    [
        (ConvReluAdd(), None, False),  # nothing but the fused op is left: no Inductor
        (ConvReluAdd(), {"inner": "inductor"}, True),  # asked for
        (ConvReluAdd(), {"max_autotune": False}, True),  # Inductor config
        (TwoSites(), None, True),  # more than fused ops is left
    ],
    ids=["only-fused", "inner-inductor", "inductor-config", "more-left"],
)
def test_inductor_compiles_what_is_left_by_default(monkeypatch, model, options, inductor):
    from fx_fuse import backend

    calls = []
    real = backend._inductor
    monkeypatch.setitem(
        backend._COMPILERS, "inductor", lambda *args: calls.append(1) or real(*args)
    )
    model, x = model.eval(), torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="fx_fuse", options=options, fullgraph=True)
    with torch.no_grad():
        for got, want in zip(compiled(x), model(x)):
            torch.testing.assert_close(got, want)
    assert counters["fx_fuse"]["fused"] >= 1
    assert bool(calls) == inductor


def test_graph_breaks_fuse_in_every_graph():
    model, x = TwoSites(graph_break=True).eval(), torch.randn(2, 3, 16, 16)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    # Dynamo hands each graph to the backend; wrap it to see the rewritten graphs.
    from fx_fuse.backend import fx_fuse_backend

    def backend(gm, example_inputs):
        compiled = fx_fuse_backend(gm, example_inputs, options={"inner": "eager"})
        graphs.append(gm)
        return compiled

    with torch.no_grad():
        out = torch.compile(model, backend=backend)(x)
        torch.testing.assert_close(out[0], model(x)[0])
    assert len(graphs) == 2
    assert [sum(n.target is OP for n in gm.graph.nodes) for gm in graphs] == [1, 1]
    assert counters["fx_fuse"]["fused"] == 2


def test_training_step_under_the_backend():
    model, x = TwoSites(), torch.randn(2, 3, 12, 12)
    compiled = torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"})
    loss = compiled(x)[0].square().mean()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x)[0].square().mean().backward()
    for got, p in zip(grads, model.parameters()):
        torch.testing.assert_close(got, p.grad)
    assert counters["fx_fuse"]["fused"] == 2


def test_bad_options_raise():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(Exception, match="options\\['inner'\\]"):
        torch.compile(TwoSites(), backend="fx_fuse", options={"inner": "tvm"})(x)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="need inner='inductor'"):
        torch.compile(TwoSites(), backend="fx_fuse", options={"inner": "eager", "x": 1})(x)


def test_entry_point_works_without_importing_fx_fuse():
    script = textwrap.dedent(
        """
        import sys
        import torch
        from torch._dynamo.utils import counters
        sys.path.insert(0, "examples")
        from kernelbench_level2_problem1 import Model
        assert "fx_fuse" in torch._dynamo.list_backends(), torch._dynamo.list_backends()
        model = Model(8, 16, 3, (16, 1, 1))
        x = torch.rand(2, 8, 12, 12)
        assert "fx_fuse" not in sys.modules
        with torch.no_grad():
            out = torch.compile(model, backend="fx_fuse")(x)
            torch.testing.assert_close(out, model(x))
        print("fused", counters["fx_fuse"]["fused"])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "fused 1" in result.stdout
