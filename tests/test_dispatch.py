"""Which CUDA kernel the op picks (host-side rules; no GPU needed)."""

import pytest
import torch

from fx_fuse import _cuda, ops


def test_patch_kernel_size_rule():
    sms = 132
    # the headline: 128 images of 126 x 126 output pixels, 128 channels
    assert _cuda._patch_pays(128 * 126 * 126, 128, sms)
    # ResNet layers at batch 32: 64 channels (half-empty tiles), too few tiles
    assert not _cuda._patch_pays(32 * 56 * 56, 64, sms)
    assert not _cuda._patch_pays(32 * 14 * 14, 256, sms)
    # the threshold: 4 tiles of 256 pixels x 128 channels per SM
    assert _cuda._patch_pays(4 * sms * 256, 128, sms)
    assert not _cuda._patch_pays((4 * sms - 1) * 256, 128, sms)
    assert _cuda._patch_pays(2 * sms * 256, 256, sms)


def test_patch_kernel_can_be_disabled(monkeypatch):
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    assert _cuda._patch_enabled()
    monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")
    assert not _cuda._patch_enabled()


def test_cudnn_path_size_rule():
    sms = 132
    # ResNet 3x3 layers at batch 32: 56 px (784 tiles, K 576), 14 px (98 tiles, K 2304)
    assert _cuda._cudnn_pays(64, 576, False, 784, sms, exact_fp32=False)
    assert _cuda._cudnn_pays(256, 2304, False, 98, sms, exact_fp32=False)
    # K >= 512 up to 64 tiles per SM; the headline with 64 output channels is above
    assert _cuda._cudnn_pays(64, 512, False, 64 * sms - 1, sms, exact_fp32=False)
    assert not _cuda._cudnn_pays(64, 576, False, 15876, sms, exact_fp32=False)
    assert not _cuda._cudnn_pays(64, 511, False, 1000, sms, exact_fp32=False)
    # strided or small K with the SMs filled: the K-table kernel (a 1x1 with 256 channels)
    assert not _cuda._cudnn_pays(64, 576, True, 196, sms, exact_fp32=False)
    assert not _cuda._cudnn_pays(256, 256, False, 784, sms, exact_fp32=False)
    # fewer tiles than SMs, or exact fp32, at any K
    assert _cuda._cudnn_pays(16, 144, True, sms - 1, sms, exact_fp32=False)
    assert not _cuda._cudnn_pays(16, 144, True, sms, sms, exact_fp32=False)
    assert _cuda._cudnn_pays(64, 576, True, 15876, sms, exact_fp32=True)
    # few input channels (a 3-channel stem, an 8-channel layer): always the K-table kernel
    assert not _cuda._cudnn_pays(3, 147, True, 10, sms, exact_fp32=True)
    assert not _cuda._cudnn_pays(8, 72, False, 10, sms, exact_fp32=False)


class _H100:
    multi_processor_count = 132


@pytest.mark.parametrize(
    "x_shape,cout,k,dtype,tf32,expected",
    [
        ((128, 64, 128, 128), 128, 3, torch.float32, True, "patch"),
        ((128, 64, 128, 128), 128, 3, torch.bfloat16, True, "patch"),
        ((128, 64, 128, 128), 128, 3, torch.float32, False, "cudnn"),  # exact fp32
        ((128, 64, 128, 128), 64, 3, torch.float32, True, "fused"),  # 64 channels: K-table
        ((32, 256, 14, 14), 256, 3, torch.float32, True, "cudnn"),  # 98 tiles
        ((32, 64, 56, 56), 64, 3, torch.float32, True, "cudnn"),  # K 576, 729 tiles
        ((32, 256, 56, 56), 64, 1, torch.float32, True, "fused"),  # K 256, 784 tiles
        ((1, 3, 16, 16), 16, 3, torch.float32, False, "fused"),  # 3 input channels
        ((1, 16, 16, 16), 16, 3, torch.float32, True, "cudnn"),  # one tile
    ],
)
def test_path_choice(monkeypatch, x_shape, cout, k, dtype, tf32, expected):
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    monkeypatch.setattr(_cuda, "_device_properties", lambda device: _H100)
    x = torch.empty(x_shape, dtype=dtype, device="meta")
    w = torch.empty(cout, x_shape[1], k, k, dtype=dtype, device="meta")
    out_shape = ops.output_shape(x, w, [1, 1], [0, 0], [1, 1])
    assert _cuda._path(x, w, out_shape, [1, 1], tf32) == expected
    if expected == "cudnn":
        monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
        assert _cuda._path(x, w, out_shape, [1, 1], tf32) == "fused"


def test_cudnn_path_can_be_disabled(monkeypatch):
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    assert _cuda._cudnn_enabled()
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
    assert not _cuda._cudnn_enabled()
