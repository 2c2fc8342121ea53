"""explain: the report, its table and code, and the command line."""

import subprocess
import sys
import textwrap

import torch
import torch.nn as nn

import fx_fuse


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fused = nn.Conv2d(3, 4, 3, padding=1)
        self.second = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.fused(x)) + x.mean(1, keepdim=True)
        r = torch.relu(self.second(y))
        return r + y, r


def test_report_lists_fused_and_refused_sites():
    report = fx_fuse.explain(Mixed(), torch.randn(2, 3, 10, 10))
    assert (report.fused, report.refused) == (1, 1)
    fused, refused = report.sites
    assert fused.fused and fused.location.startswith("fused")
    assert fused.input_shape == [2, 3, 10, 10] and fused.weight_shape == [4, 3, 3, 3]
    assert not refused.fused and refused.reason == "intermediate_is_graph_output"
    assert refused.location.startswith("second")
    text = str(report)
    assert "1 fused, 1 refused" in text
    assert "intermediate_is_graph_output: The conv or relu output is returned" in text
    assert "torch.ops.fx_fuse.conv2d_relu_add.default" in report.code


def test_report_on_a_model_without_sites():
    report = fx_fuse.explain(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU()), torch.randn(1, 3, 4, 4))
    assert report.sites == [] and "no conv2d -> relu -> add site" in str(report)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fx_fuse", *args], capture_output=True, text=True, timeout=600
    )


def test_cli_explains_a_kernelbench_file(tmp_path):
    problem = tmp_path / "problem.py"
    problem.write_text(textwrap.dedent(
        """
        import torch, torch.nn as nn

        class Model(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.conv = nn.Conv2d(c, 2 * c, 3)
                self.bias = nn.Parameter(torch.randn(2 * c, 1, 1))

            def forward(self, x):
                return torch.relu(self.conv(x)) + self.bias

        def get_inputs():
            return [torch.rand(2, 4, 9, 9)]

        def get_init_inputs():
            return [4]
        """
    ))
    result = run_cli("explain", str(problem), "--device", "cpu", "--code")
    assert result.returncode == 0, result.stderr
    assert "1 fused, 0 refused" in result.stdout
    assert "2x4x9x9" in result.stdout and "8x4x3x3" in result.stdout
    assert "conv2d_relu_add" in result.stdout


def test_cli_rejects_a_file_without_the_convention(tmp_path):
    problem = tmp_path / "bad.py"
    problem.write_text("x = 1\n")
    result = run_cli("explain", str(problem), "--device", "cpu")
    assert result.returncode != 0
    assert "must define Model, get_inputs() and get_init_inputs()" in result.stderr


def test_quickstart_runs_on_this_machine():
    result = subprocess.run(
        [sys.executable, "examples/quickstart.py"], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr
    assert "1 fused, 0 refused" in result.stdout
    assert "matches eager" in result.stdout
