"""Training through the fused op under the backend: gradients for input, weight, conv
bias and `other` equal eager's; the training example runs and matches eager's losses.

(gradcheck in float64 on the op itself is in tests/test_ops.py.)"""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch._dynamo.utils import counters

import models

ROOT = Path(__file__).resolve().parents[1]


class OneSite(nn.Module):
    """relu(conv(x)) + other, where `other` is a parameter of the given shape, or (shape
    None) a residual computed from the input, so its gradient flows back into x too."""

    def __init__(self, c_in, c_out, other_shape, bias=True, stride=1, padding=1, groups=1,
                 dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, padding, dilation, groups, bias=bias)
        self.other = None if other_shape is None else nn.Parameter(torch.randn(other_shape))
        self.project = nn.Conv2d(c_in, c_out, 1, stride) if other_shape is None else None

    def forward(self, x):
        other = self.project(x) if self.other is None else self.other
        return torch.relu(self.conv(x)) + other


CASES = {
    "per_channel": dict(c_in=3, c_out=5, other_shape=(5, 1, 1)),
    "per_channel_4d_no_bias": dict(c_in=3, c_out=5, other_shape=(1, 5, 1, 1), bias=False),
    "residual_from_input_strided": dict(c_in=4, c_out=6, other_shape=None, stride=2),
    "full_tensor_grouped": dict(c_in=6, c_out=4, other_shape=(2, 4, 7, 9), groups=2),
    "scalar_tensor_dilated": dict(c_in=3, c_out=5, other_shape=(), dilation=2, padding=2),
}


def _grads(model, x):
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    # A loss that weights every output element differently, so every gradient is distinct.
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    (out * weights).sum().backward()
    grads = {"input": x.grad}
    module = getattr(model, "_orig_mod", model)  # the compiled wrapper's parameters
    grads.update({name: p.grad for name, p in module.named_parameters()})
    return out.detach(), grads


@pytest.mark.parametrize("case", CASES)
def test_gradients_equal_eager(case):
    torch.manual_seed(0)
    model = OneSite(**CASES[case])
    x = torch.randn(2, model.conv.in_channels, 7, 9)
    want_out, want = _grads(model, x)
    compiled = torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"})
    got_out, got = _grads(compiled, x)
    torch.testing.assert_close(got_out, want_out)
    expected_names = {"input", "conv.weight"} | (
        {"conv.bias"} if CASES[case].get("bias", True) else set()
    ) | ({"other"} if CASES[case]["other_shape"] is not None else {"project.weight", "project.bias"})
    assert set(got) == set(want) == expected_names
    for name in want:
        assert got[name] is not None, name
        torch.testing.assert_close(got[name], want[name], msg=lambda m: f"{name}: {m}")
    assert counters["fx_fuse"]["fused"] == 1


def test_gradients_equal_eager_with_inductor():
    """The default inner compiler differentiates the rest of the graph itself."""
    torch.manual_seed(0)
    model = OneSite(**CASES["residual_from_input_strided"])
    x = torch.randn(2, 4, 7, 9)
    want_out, want = _grads(model, x)
    got_out, got = _grads(torch.compile(model, backend="fx_fuse"), x)
    torch.testing.assert_close(got_out, want_out)
    for name in want:
        torch.testing.assert_close(got[name], want[name], msg=lambda m: f"{name}: {m}")
    assert counters["fx_fuse"]["fused"] == 1


def test_gradient_of_other_where_relu_is_inactive():
    """Where relu clips the conv to 0, only `other` receives gradient: with a conv bias of
    -1e4 every activation is dead, so weight, bias and input gradients are exactly zero and
    other's gradient is the sum of the upstream gradient over the broadcast dimensions."""
    model = OneSite(3, 4, (4, 1, 1))
    with torch.no_grad():
        model.conv.bias.fill_(-1e4)
    x = torch.randn(2, 3, 6, 6)
    _, got = _grads(torch.compile(model, backend="fx_fuse", options={"inner": "aot_eager"}), x)
    for name in ("input", "conv.weight", "conv.bias"):
        assert not got[name].any(), name
    weights = torch.linspace(-1, 1, 2 * 4 * 6 * 6).reshape(2, 4, 6, 6)
    torch.testing.assert_close(got["other"], weights.sum(dim=(0, 2, 3)).reshape(4, 1, 1))


@pytest.mark.parametrize("name", ["resnet_like", "unet_like"])
def test_sgd_steps_on_a_real_architecture_match_eager(name):
    cls, shape = models.MODELS[name]
    torch.manual_seed(0)
    eager_model = cls()
    fused_model = copy.deepcopy(eager_model)
    compiled = torch.compile(fused_model, backend="fx_fuse", options={"inner": "aot_eager"})
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager_model, fused_model)]
    x = torch.randn(shape)
    for _ in range(3):
        losses = []
        for model, opt in zip((eager_model, compiled), opts):
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0])
    for p, q in zip(eager_model.parameters(), fused_model.parameters()):
        torch.testing.assert_close(q, p)
    assert counters["fx_fuse"]["fused"] == cls.expected_fused
    assert counters["fx_fuse"]["refused"] == cls.expected_refused


def test_training_example_runs_and_matches_eager():
    result = subprocess.run(
        [sys.executable, "examples/train.py", "--steps", "3", "--inner", "aot_eager",
         "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 3
    for line in lines:  # "step i: eager loss A  fx_fuse loss B"
        eager_loss, fused_loss = float(line.split()[4]), float(line.split()[7])
        assert abs(eager_loss - fused_loss) <= 1e-4 * abs(eager_loss)
    assert "fused sites: 2" in result.stdout
