"""benchmarks/bench_paths.py: its random layers are the layers it says, the same for a
seed, and its summary counts what the table shows."""

from __future__ import annotations

import math

import pytest

from repo_scripts import load_script


@pytest.fixture(scope="module")
def paths():
    return load_script("benchmarks/bench_paths.py")


def test_random_layers_are_valid_bounded_and_repeat(paths):
    layers = paths.random_layers(200, seed=3)
    assert layers == paths.random_layers(200, seed=3)
    assert layers != paths.random_layers(200, seed=4)
    for name, (n, cin, h, w), cout, k, stride, padding, _ in layers:
        out = (h + 2 * padding - k) // stride + 1
        assert h == w and out >= 1 and padding <= k // 2
        assert 2**24 <= n * cout * out * out * cin * k * k <= 2**37
        assert ("channels_last" in name) == name.endswith("channels_last")
    kinds = {layer[-1] for layer in layers}
    assert kinds == {paths.torch.float32, paths.torch.float16, paths.BF16, paths.TF32_OFF}
    assert {layer[3] for layer in layers} == {1, 3, 5, 7}
    assert 0.1 < sum("channels_last" in layer[0] for layer in layers) / len(layers) < 0.4


def test_summary_counts_near_picks_and_losses_to_eager(paths):
    # pick / fastest, eager / pick in columns 2 and 3; a layer without a pick is left out
    rows = [["a", 0, 1.0, 1.5], ["b", 0, 1.04, 0.9], ["c", 0, 1.3, 2.0],
            ["d", 0, math.nan, math.nan]]
    line = paths.summary(rows, 2)
    assert line.startswith("3 layers: the pick within 5 % of the fastest path on 2,")
    assert f"geomean {(1.0 * 1.04 * 1.3) ** (1 / 3):.3f}, worst 1.30" in line
    assert line.endswith("slower than eager on the GPU on 1")
    assert paths.summary(rows[3:], 2) == "no layer timed"
