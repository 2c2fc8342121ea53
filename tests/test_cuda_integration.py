"""The backend on a GPU: CUDA graphs, autocast, training and dynamic shapes end to end.
Skipped without CUDA; run on the device."""

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")


class Block(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bias = nn.Parameter(torch.randn(c, 1, 1))

    def forward(self, x):
        y = torch.relu(self.conv1(x)) + self.bias
        return torch.relu(self.conv2(y)) + x


def test_the_compiled_kernel_becomes_the_ops_cuda_kernel():
    """After the first CUDA call the dispatcher runs the extension's C++ kernels (no Python
    between the call and the launch, in grad mode too); their result is the op's."""
    import fx_fuse

    x = torch.randn(2, 16, 12, 12, device="cuda")
    w, b = torch.randn(8, 16, 3, 3, device="cuda"), torch.randn(8, device="cuda")
    want = torch.relu(torch.nn.functional.conv2d(x, w, b)) + 0.5
    for _ in range(2):
        got = fx_fuse.conv2d_relu_add(x, w, b, 0.5)
        torch.testing.assert_close(got, want, atol=5e-3, rtol=5e-3)
    dump = torch._C._dispatch_dump("fx_fuse::conv2d_relu_add").splitlines()
    for key in ("CUDA:", "AutogradCUDA:"):
        line = next((line for line in dump if line.startswith(key)), "")
        assert "op.cpp" in line, dump


def test_reduce_overhead_mode_uses_cuda_graphs():
    model = Block().cuda().eval()
    compiled = torch.compile(model, backend="fx_fuse", mode="reduce-overhead")
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(2, 16, 24, 24, device="cuda")
            torch.testing.assert_close(compiled(x), model(x), atol=5e-3, rtol=5e-3)
    assert counters["fx_fuse"]["fused"] == 2
    assert counters["inductor"]["cudagraph_skips"] == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_regions_fuse_and_match_eager(dtype):
    model = Block().cuda().eval()

    def run(m, x):
        with torch.autocast("cuda", dtype=dtype):
            return m(x)

    x = torch.randn(2, 16, 24, 24, device="cuda")
    with torch.no_grad():
        expected = run(model, x)
        got = run(torch.compile(model, backend="fx_fuse"), x)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got.float(), expected.float(), atol=5e-2, rtol=5e-2)
    assert counters["fx_fuse"]["fused"] == 2


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("inner", [None, "inductor"], ids=["default", "inductor"])
def test_training_step_matches_eager(inner, dynamic):
    """Training through the op's C++ autograd kernel: run as it is (the default for a graph
    of fused ops) and traced by AOTAutograd for Inductor, with static and symbolic sizes."""
    torch.manual_seed(0)
    model = Block().cuda()
    options = {"inner": inner} if inner else None
    compiled = torch.compile(model, backend="fx_fuse", options=options, dynamic=dynamic)
    x = torch.randn(4, 16, 20, 20, device="cuda")
    compiled(x).square().mean().backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().mean().backward()
    for got, p in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(got, p.grad, atol=5e-3, rtol=5e-3)
    assert counters["fx_fuse"]["fused"] == 2


def test_dynamic_shapes_do_not_recompile():
    model = Block().cuda().eval()
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        from fx_fuse.backend import fx_fuse_backend

        return fx_fuse_backend(gm, example_inputs, options={"inner": "aot_eager"})

    compiled = torch.compile(model, backend=count, dynamic=True)
    with torch.no_grad():
        # No size equal to another in the first call (16 channels): Dynamo would tie them.
        for n, h in [(2, 17), (3, 21), (5, 33)]:
            x = torch.randn(n, 16, h, h + 3, device="cuda")
            torch.testing.assert_close(compiled(x), model(x), atol=5e-3, rtol=5e-3)
    assert len(frames) == 1
