"""Small real-world conv architectures (tests/models.py) under the backend: outputs equal
eager, fused and refused counts as worked out from each architecture, no new graphs."""

import pytest
import torch
from torch._dynamo.utils import counters

import fx_fuse  # noqa: F401  (registers the op)
import models

OP = torch.ops.fx_fuse.conv2d_relu_add.default


def _make(name):
    cls, shape = models.MODELS[name]
    torch.manual_seed(0)
    return cls().eval(), torch.randn(shape)


def _graphs_with(model, x, backend, **kwargs):
    """Run ``model`` compiled with ``backend``; return (output, graphs compiled)."""
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        out = torch.compile(model, backend=backend, **kwargs)(x)
    return out, counters["stats"]["unique_graphs"] - before


@pytest.mark.parametrize("name", list(models.MODELS))
def test_matches_eager_with_expected_counts_and_no_new_graphs(name):
    model, x = _make(name)
    with torch.no_grad():
        want = model(x)
    _, eager_graphs = _graphs_with(model, x, "eager")
    counters["fx_fuse"].clear()
    got, fused_graphs = _graphs_with(model, x, "fx_fuse", options={"inner": "aot_eager"})
    torch.testing.assert_close(got, want)
    assert counters["fx_fuse"]["fused"] == type(model).expected_fused
    assert counters["fx_fuse"]["refused"] == type(model).expected_refused
    assert fused_graphs == eager_graphs == getattr(type(model), "expected_graphs", 1)


def test_graph_break_model_fuses_in_each_graph():
    """Which graph holds which site: [a], [b], [d] -- c's add is alone after the break."""
    model, x = _make("graph_break")
    per_graph = []
    from fx_fuse.backend import fx_fuse_backend

    def backend(gm, example_inputs):
        compiled = fx_fuse_backend(gm, example_inputs, options={"inner": "eager"})
        per_graph.append(sum(node.target is OP for node in gm.graph.nodes))
        return compiled

    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, backend=backend)(x), model(x))
    assert per_graph == [1, 1, 1]


def test_explain_reports_the_same_graph_breaks():
    """torch._dynamo.explain sees the same breaks in the model as the fx_fuse run does."""
    model, x = _make("graph_break")
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_count == models.GraphBreakNet.expected_graphs
    assert explanation.graph_break_count == models.GraphBreakNet.expected_graphs - 1


def test_resnet_like_with_the_default_inner_compiler():
    """Inductor compiles everything around the fused op."""
    model, x = _make("resnet_like")
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend="fx_fuse")(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert counters["fx_fuse"]["fused"] == models.ResNetLike.expected_fused
    assert counters["fx_fuse"]["refused"] == models.ResNetLike.expected_refused
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("name", ["vgg_like", "unet_like"])
def test_channels_last_models_match_eager(name):
    model, x = _make(name)
    model = model.to(memory_format=torch.channels_last)
    x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"})(x)
    torch.testing.assert_close(got, want)
    assert counters["fx_fuse"]["fused"] == type(model).expected_fused
