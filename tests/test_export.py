"""torch.export round trip: export, fuse, export again, save, load in a fresh process
(after ``import fx_fuse``), run; and what AOTInductor does with the op."""

import subprocess
import sys
import textwrap

import torch

import fx_fuse
import models

OP = torch.ops.fx_fuse.conv2d_relu_add.default


def _run_fresh(script: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )


def _fused_export(model, x, dynamic_shapes=None):
    ep = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes)
    gm = fx_fuse.fuse(ep.module())
    return torch.export.export(gm, (x,), dynamic_shapes=dynamic_shapes)


def _count(graph) -> int:
    return sum(node.target is OP for node in graph.nodes)


LOAD_AND_RUN = """
    import sys
    import torch
    if sys.argv[3] == "try_without_fx_fuse":
        try:
            torch.export.load(sys.argv[1])
        except Exception as e:  # torch's warning on stderr names the unknown op
            print("without fx_fuse: raised", type(e).__name__)
    import fx_fuse  # registers the op, so the loaded graph can name it
    ep = torch.export.load(sys.argv[1])
    data = torch.load(sys.argv[2])
    fused = sum(n.target is torch.ops.fx_fuse.conv2d_relu_add.default for n in ep.graph.nodes)
    with torch.no_grad():
        for x, want in zip(data["inputs"], data["outputs"]):
            torch.testing.assert_close(ep.module()(x), want)
    print("fused", fused, "ran", len(data["inputs"]))
"""


def test_export_fuse_export_save_load_run(tmp_path):
    """ResNetLike: a Python-number `other` becomes a scalar_tensor node in the ATen graph,
    and one site is refused; both survive serialization."""
    cls, shape = models.MODELS["resnet_like"]
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(shape)
    ep = _fused_export(model, x)
    assert _count(ep.graph) == cls.expected_fused
    torch.export.save(ep, tmp_path / "model.pt2")
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(ep.module()(x), want)
    torch.save({"inputs": [x], "outputs": [want]}, tmp_path / "data.pt")

    result = _run_fresh(
        LOAD_AND_RUN, tmp_path / "model.pt2", tmp_path / "data.pt", "try_without_fx_fuse"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "without fx_fuse: raised" in result.stdout
    assert "fx_fuse.conv2d_relu_add" in result.stderr
    assert f"fused {cls.expected_fused} ran 1" in result.stdout


def test_export_with_a_dynamic_batch_round_trips(tmp_path):
    torch.manual_seed(0)
    model = models.UNetLike().eval()
    batch = torch.export.Dim("batch", min=2, max=64)
    ep = _fused_export(model, torch.randn(2, 3, 16, 16), dynamic_shapes=({0: batch},))
    assert _count(ep.graph) == models.UNetLike.expected_fused
    torch.export.save(ep, tmp_path / "model.pt2")
    inputs = [torch.randn(n, 3, 16, 16) for n in (2, 5, 11)]
    with torch.no_grad():
        outputs = [model(x) for x in inputs]
    torch.save({"inputs": inputs, "outputs": outputs}, tmp_path / "data.pt")

    result = _run_fresh(LOAD_AND_RUN, tmp_path / "model.pt2", tmp_path / "data.pt", "import")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "without fx_fuse" not in result.stdout
    assert f"fused {models.UNetLike.expected_fused} ran 3" in result.stdout


AOTI_RUN = """
    import sys
    import torch
    x, want = torch.load(sys.argv[2])
    try:  # without fx_fuse's Python registration the C++ runtime cannot find the op
        torch._inductor.aoti_load_package(sys.argv[1])(x)
    except Exception as e:
        print("without fx_fuse:", str(e).splitlines()[0])
    import fx_fuse
    torch.testing.assert_close(torch._inductor.aoti_load_package(sys.argv[1])(x), want)
    print("with fx_fuse: ran")
"""


def test_aot_inductor_runs_the_op_only_with_fx_fuse_imported(tmp_path):
    """AOTInductor compiles the graph around the op and calls the op through the
    dispatcher (a proxy-executor fallback): the package runs in a Python process that has
    imported fx_fuse, and fails to find the op without it."""
    torch.manual_seed(0)
    model, x = models.SmallConvNet().eval(), torch.randn(2, 3, 12, 10)
    ep = _fused_export(model, x)
    assert _count(ep.graph) == models.SmallConvNet.expected_fused
    # The wrapper's C++ compile dominates the cost; -O0 keeps it to seconds here.
    path = torch._inductor.aoti_compile_and_package(
        ep,
        package_path=str(tmp_path / "model_aoti.pt2"),
        inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"},
    )
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "data.pt")
    result = _run_fresh(AOTI_RUN, path, tmp_path / "data.pt")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "without fx_fuse: Could not find schema for fx_fuse::conv2d_relu_add" in result.stdout
    assert "with fx_fuse: ran" in result.stdout
