"""The op's numerics on the GPU beyond the kernel tests' tolerances: exact fp32 (TF32 off)
keeps fp32's accuracy where 3xTF32's error, which grows with K, would not
(docs/performance.md, v70). Skipped without CUDA; run on the device."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fx_fuse  # noqa: F401  (registers the op)
from fx_fuse import _cuda

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_exact_fp32_past_the_3xtf32_bound_keeps_fp32_accuracy(monkeypatch):
    # K = 576 x 9 = 5184, and enough patch tiles (34) that the rules would otherwise give
    # the layer to the patch kernel's 3xTF32 (measured ~1.4e-4 of the rounding scale at
    # this K, against cuDNN's fp32 ~1e-5)
    for switch in ("FX_FUSE_DISABLE_PATCH", "FX_FUSE_DISABLE_CUDNN", "FX_FUSE_DISABLE_WGMMA"):
        monkeypatch.delenv(switch, raising=False)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(4, 576, 48, 48, generator=gen).cuda()
    w = (torch.randn(128, 576, 3, 3, generator=gen) / math.sqrt(5184)).cuda()
    b, other = torch.randn(128, generator=gen).cuda(), torch.randn(128, 1, 1, generator=gen).cuda()
    args = (x, w, b, other, [1, 1], [0, 0], [1, 1], 1)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, allow_tf32=False):
        _cuda.forget_plans()
        assert _cuda.plan(*args)[0] == "cudnn"
        out = torch.ops.fx_fuse.conv2d_relu_add.default(*args)
    ref = torch.relu(F.conv2d(x.double(), w.double(), b.double())) + other.double()
    scale = F.conv2d(x.double() ** 2, w.double() ** 2).sqrt()
    assert (out.double() - ref).abs().max().item() < 5e-5 * scale.max().item()
