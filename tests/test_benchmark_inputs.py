"""benchmarks/_timing.py: the layer inputs every benchmark script times the op on."""

from __future__ import annotations

import torch

from repo_scripts import load_script


def _conv_inputs(*args, **kwargs):
    return load_script("benchmarks/_timing.py").conv_inputs(*args, device="cpu", **kwargs)


def test_shapes_dtype_and_fan_in_scale():
    x, w, b, other = _conv_inputs((2, 8, 6, 5), 12, 3, torch.bfloat16, groups=2)
    assert x.shape == (2, 8, 6, 5) and w.shape == (12, 4, 3, 3)
    assert b.shape == (12,) and other.shape == (12, 1, 1)
    assert all(t.dtype == torch.bfloat16 for t in (x, w, b, other))
    assert 0 <= x.min() and x.max() <= 1
    # weights of fan-in 4 x 3 x 3 = 36: standard deviation 1/6, far from randn's 1
    assert 0.1 < w.float().std() < 0.25


def test_channels_last_and_a_seeded_generator_repeats():
    x, w, _, _ = _conv_inputs((2, 8, 6, 5), 12, 3, torch.float32, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert w.is_contiguous(memory_format=torch.channels_last)
    first = _conv_inputs((1, 4, 5, 5), 8, 1, torch.float32, generator=torch.Generator().manual_seed(0))
    again = _conv_inputs((1, 4, 5, 5), 8, 1, torch.float32, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
