"""Which CUDA kernel the op picks (host-side rules; no GPU needed)."""

import pytest
import torch

from fx_fuse import _cuda, ops


def test_patch_kernel_size_rule_nchw():
    sms = 132

    def pays(pixels, cout, k, elem=4, width=128):
        return _cuda._patch_pays(pixels, cout, k, sms, False, elem, width, False, width)

    # the headline: 128 images of 126 x 126 output pixels, 128 channels, K = 64 x 9
    assert pays(128 * 126 * 126, 128, 576)
    assert pays(128 * 126 * 126, 128, 576, elem=2)
    # half a tile (256 pixels x 128 channels) per SM, from 32 output channels
    assert pays(sms // 2 * 256, 128, 576)
    assert not pays((sms // 2 - 1) * 256, 128, 576)
    assert pays(sms // 2 * 256, 128, 576, elem=2)
    assert not pays((sms // 2 - 1) * 256, 128, 576, elem=2)
    assert pays(32 * 56 * 56, 64, 576, width=56)  # ResNet 56 px at batch 32: 392 tiles
    assert pays(32 * 128 * 128, 32, 288)
    assert pays(32 * 56 * 56, 64, 576, elem=2, width=56)
    assert pays(32 * 128 * 128, 32, 288, elem=2)
    # from 16 output channels
    assert pays(128 * 30 * 30, 16, 288, width=32)
    assert pays(32 * 56 * 56, 16, 576, elem=2, width=56)
    assert not pays(32 * 128 * 128, 15, 144)
    assert not pays(32 * 128 * 128, 8, 144, elem=2)
    # rows longer than 64 bytes (one bulk copy per patch row)
    assert pays(128 * 32 * 32, 256, 2304, width=32)
    assert not pays(128 * 32 * 32, 256, 2304, elem=2, width=32)
    assert not pays(512 * 16 * 16, 128, 1152, width=16)
    # K up to 3456 in fp32 (5x5 layers of 128 input channels, 3x3 of 384), 2304 in 16-bit;
    # cuDNN multiplies faster beyond
    assert pays(16 * 64 * 64, 128, 3200, width=64)
    assert pays(32 * 32 * 32, 384, 3456, width=32)
    assert not pays(32 * 32 * 32, 384, 3457, width=32)
    assert not pays(32 * 28 * 28, 512, 4608, width=28)
    assert not pays(8 * 112 * 112, 256, 2305, elem=2, width=112)
    assert not pays(256 * 16 * 16, 512, 4608)
    # 16-bit above K = 1152: rows longer than 128 bytes (VGG's 256 channels at 56 px go to
    # cuDNN, at 112 px stay); fp32 keeps 64
    assert pays(64 * 64 * 64, 128, 1152, elem=2, width=64)
    assert not pays(16 * 56 * 56, 256, 2304, elem=2, width=56)
    assert not pays(32 * 56 * 56, 192, 1728, elem=2, width=56)
    assert pays(8 * 112 * 112, 256, 2304, elem=2, width=112)
    assert not pays(8 * 64 * 64, 256, 2304, elem=2, width=64)
    assert pays(8 * 65 * 65, 256, 2304, elem=2, width=65)
    assert pays(16 * 56 * 56, 256, 2304, width=56)


def test_patch_kernel_size_rule_channels_last():
    sms = 132

    def pays(pixels, cout, k, elem=4, out_width=126):
        return _cuda._patch_pays(pixels, cout, k, sms, True, elem, 128, False, out_width)

    assert pays(128 * 126 * 126, 128, 576)
    # 4 tiles per SM, 64 output channels or more (16-bit: more than 64, or 64 where the
    # output rows fill their tiles), K below 1024
    assert pays(4 * sms * 256, 128, 576)
    assert not pays((4 * sms - 1) * 256, 128, 576)
    assert pays(128 * 126 * 126, 64, 576)
    assert pays(128 * 56 * 56, 64, 576, out_width=56)
    assert not pays(128 * 126 * 126, 48, 576)
    assert pays(128 * 126 * 126, 72, 576, elem=2)
    assert pays(128 * 56 * 56, 72, 576, elem=2, out_width=56)
    assert pays(128 * 126 * 126, 64, 576, elem=2)  # 126 of 128 tile columns
    assert pays(128 * 128 * 128, 64, 576, elem=2, out_width=128)
    assert not pays(128 * 56 * 56, 64, 576, elem=2, out_width=56)  # 56 of 64
    assert not pays(32 * 224 * 224, 64, 576, elem=2, out_width=224)  # 224 of 256
    assert not pays(128 * 126 * 126, 56, 576, elem=2)
    assert pays(256 * 28 * 28, 128, 1023)
    assert not pays(256 * 28 * 28, 128, 1024)


def test_row_fill_of_the_patch_tiles():
    # tiles of the widest power of two up to 128 pixels that covers the row
    assert _cuda._row_fill(126) == 126 / 128
    assert _cuda._row_fill(128) == 1.0
    assert _cuda._row_fill(56) == 56 / 64
    assert _cuda._row_fill(224) == 224 / 256
    assert _cuda._row_fill(250) == 250 / 256
    assert _cuda._row_fill(5) == 5 / 8


@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_kernel_size_rule_exact_fp32(channels_last):
    sms = 132

    def pays(pixels, cout, k, width=128):
        return _cuda._patch_pays(pixels, cout, k, sms, channels_last, 4, width, True, width)

    # a quarter of a tile per SM, from 16 output channels and K = 288, in either layout
    assert pays(128 * 126 * 126, 128, 576)
    assert pays(-(-sms // 4) * 256, 128, 576)
    assert not pays((-(-sms // 4) - 1) * 256, 128, 576)
    assert pays(4 * 56 * 56, 64, 576, width=56)  # ResNet 56 px at batch 4
    assert pays(32 * 128 * 128, 16, 288)
    assert not pays(32 * 128 * 128, 8, 288)
    assert not pays(32 * 64 * 64, 32, 144, width=64)  # 16 input channels: half a block
    # where TF32 goes to cuDNN: 64 channels-last output channels, long K, 64-byte rows
    assert pays(128 * 126 * 126, 64, 576)
    assert pays(256 * 16 * 16, 512, 4608, width=16)


def test_patch_kernel_can_be_disabled(monkeypatch):
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    assert _cuda._patch_enabled()
    monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")
    assert not _cuda._patch_enabled()


def _cudnn_pays(cin, k, strided, tiles, sms, exact_fp32, channels_last=False, cout=64, elem=4):
    return _cuda._cudnn_pays(cin, cout, k, strided, tiles, sms, exact_fp32, channels_last, elem)


def test_cudnn_path_size_rule():
    sms = 132
    # channels-last input with enough channels: always
    assert _cudnn_pays(64, 576, False, 15876, sms, exact_fp32=False, channels_last=True)
    assert not _cudnn_pays(8, 72, False, 10, sms, exact_fp32=False, channels_last=True)
    # ResNet 3x3 layers at batch 32: 56 px (784 tiles, K 576), 14 px (98 tiles, K 2304)
    assert _cudnn_pays(64, 576, False, 784, sms, exact_fp32=False)
    assert _cudnn_pays(256, 2304, False, 98, sms, exact_fp32=False)
    # K >= 512 up to 64 tiles per SM; the headline with 64 output channels is above
    assert _cudnn_pays(64, 512, False, 64 * sms - 1, sms, exact_fp32=False)
    assert not _cudnn_pays(64, 576, False, 15876, sms, exact_fp32=False)
    # K >= 1024 at any size
    assert _cudnn_pays(128, 1152, False, 15876, sms, exact_fp32=False)
    assert not _cudnn_pays(64, 511, False, 1000, sms, exact_fp32=False)
    # 1x1 layers with the SMs filled: the K-table kernel
    assert not _cudnn_pays(256, 256, False, 784, sms, exact_fp32=False)
    assert not _cudnn_pays(128, 128, False, 784, sms, exact_fp32=False, cout=512)
    # 32 output channels or fewer at stride 1: half-empty K-table tiles
    assert _cudnn_pays(32, 288, False, 4096, sms, exact_fp32=False, cout=32)
    assert not _cudnn_pays(32, 288, False, 4096, sms, exact_fp32=False, cout=33)
    # strided with the SMs filled: the K-table kernel from 65 output channels (ResNet's
    # 64 -> 128 stride-2 layer, batch 32: 196 tiles), cuDNN up to 64 (64 -> 64 from 112 px,
    # batch 32: 784 tiles)
    assert not _cudnn_pays(64, 576, True, 196, sms, exact_fp32=False, cout=128)
    assert not _cudnn_pays(64, 576, True, 784, sms, exact_fp32=False, cout=65)
    assert _cudnn_pays(64, 576, True, 784, sms, exact_fp32=False, cout=64)
    assert _cudnn_pays(32, 288, True, 4096, sms, exact_fp32=False, cout=32)
    # strided at K >= 1024: cuDNN over two channel tiles or more (128 -> 256 from 56 px, 392
    # tiles; a 1x1 1024 -> 2048 layer from 14 px, 208 tiles), the K-table kernel over one
    # (128 -> 128 from 64 px, 256 tiles) or below K = 1024 (a 1x1 512 -> 1024 layer)
    assert _cudnn_pays(128, 1152, True, 392, sms, exact_fp32=False, cout=256)
    assert _cudnn_pays(1024, 1024, True, 208, sms, exact_fp32=False, cout=2048)
    assert not _cudnn_pays(128, 1152, True, 256, sms, exact_fp32=False, cout=128)
    assert not _cudnn_pays(512, 512, True, 392, sms, exact_fp32=False, cout=1024)
    # fewer tiles than SMs, or exact fp32, at any K
    assert _cudnn_pays(16, 144, True, sms - 1, sms, exact_fp32=False, cout=128)
    assert not _cudnn_pays(16, 144, True, sms, sms, exact_fp32=False, cout=128)
    assert _cudnn_pays(64, 576, True, 15876, sms, exact_fp32=True)
    # few input channels (a 3-channel stem, an 8-channel layer): the K-table kernel, but
    # for exact fp32 (3xTF32 on a padded channel block against cuDNN's fp32)
    assert not _cudnn_pays(3, 147, True, 10, sms, exact_fp32=False)
    assert not _cudnn_pays(8, 72, False, 10, sms, exact_fp32=False)
    assert not _cudnn_pays(8, 72, False, 10, sms, exact_fp32=False, elem=2)
    assert not _cudnn_pays(15, 135, False, 4096, sms, exact_fp32=False, channels_last=True)
    assert _cudnn_pays(3, 147, True, 10, sms, exact_fp32=True)
    assert _cudnn_pays(8, 72, False, 4096, sms, exact_fp32=True, channels_last=True)
    assert _cudnn_pays(15, 135, False, 4096, sms, exact_fp32=True, cout=128)


def test_cudnn_path_size_rule_16bit():
    sms = 132

    def pays(cin, k, strided, tiles, cout=128):
        return _cudnn_pays(cin, k, strided, tiles, sms, exact_fp32=False, cout=cout, elem=2)

    # where fp32 keeps the K-table kernel, 16-bit goes to cuDNN: a 256 -> 256 channel 1x1
    # layer at 56 px, batch 32 (1568 tiles); stride-2 layers, 64 -> 128 to 28 px (196
    # tiles) and 128 -> 128 from 64 px (256 tiles); 126 px rows at batch 128 (120 tiles
    # per SM)
    assert pays(256, 256, False, 1568, cout=256)
    assert not _cudnn_pays(256, 256, False, 1568, sms, exact_fp32=False, cout=256)
    assert pays(64, 576, True, 196)
    assert not _cudnn_pays(64, 576, True, 196, sms, exact_fp32=False, cout=128)
    assert pays(128, 1152, True, 256)
    assert not _cudnn_pays(128, 1152, True, 256, sms, exact_fp32=False, cout=128)
    assert pays(64, 576, False, 15876)
    assert not _cudnn_pays(64, 576, False, 15876, sms, exact_fp32=False, cout=128)
    # but not 1x1 strided layers, which follow the fp32 rule: the K-table kernel (ResNet's
    # downsampling shortcuts 64 -> 128 from 56 px and 512 -> 1024 from 28 px, batch 32),
    # cuDNN at K >= 1024 over two channel tiles or more (1024 -> 2048 from 14 px)
    assert not pays(64, 64, True, 196)
    assert not pays(512, 512, True, 392, cout=1024)
    assert pays(1024, 1024, True, 208, cout=2048)
    # nor below 16 input channels
    assert not pays(8, 72, False, 1000)


H100_SMS = 132


@pytest.mark.parametrize(
    "x_shape,cout,k,dtype,tf32,layout,patch_runs,expected,without_cudnn",
    [
        ((128, 64, 128, 128), 128, 3, torch.float32, True, "nchw", True, "patch", "patch"),
        ((128, 64, 128, 128), 128, 3, torch.bfloat16, True, "nchw", True, "patch", "patch"),
        # exact fp32: 3xTF32 on the patch kernel, by the same rule; cuDNN elsewhere
        ((128, 64, 128, 128), 128, 3, torch.float32, False, "nchw", True, "patch", "patch"),
        ((128, 64, 128, 128), 128, 3, torch.float32, False, "cl", True, "patch", "patch"),
        ((2, 64, 56, 56), 64, 3, torch.float32, False, "nchw", True, "cudnn", "fused"),
        ((32, 64, 56, 56), 64, 3, torch.float32, False, "cl", True, "patch", "patch"),
        ((128, 64, 128, 128), 64, 3, torch.float32, True, "nchw", True, "patch", "patch"),
        # 14 px at batch 32: 50 tiles
        ((32, 256, 14, 14), 256, 3, torch.float32, True, "nchw", True, "cudnn", "fused"),
        # where the binding does not take the input (14 px rows of 28 bytes): the other rules
        ((512, 256, 14, 14), 256, 3, torch.bfloat16, True, "nchw", False, "cudnn", "fused"),
        # rows of 64 bytes or fewer (16-bit at 32 px): not the patch kernel
        ((128, 256, 32, 32), 256, 3, torch.bfloat16, True, "nchw", True, "cudnn", "fused"),
        ((128, 256, 32, 32), 256, 3, torch.float32, True, "nchw", True, "patch", "patch"),
        # 64 output channels at batch 32: 2.8 tiles per SM
        ((32, 64, 56, 56), 64, 3, torch.float32, True, "nchw", True, "patch", "patch"),
        ((32, 64, 56, 56), 64, 3, torch.bfloat16, True, "nchw", True, "patch", "patch"),
        # 64 output channels at batch 8: 0.7 tiles per SM; at batch 4, 0.35
        ((8, 64, 56, 56), 64, 3, torch.bfloat16, True, "nchw", True, "patch", "patch"),
        ((4, 64, 56, 56), 64, 3, torch.bfloat16, True, "nchw", True, "cudnn", "fused"),
        ((32, 256, 56, 56), 64, 1, torch.float32, True, "nchw", False, "fused", "fused"),  # 1x1
        # 16-bit: cuDNN where the patch kernel does not run (a 1x1 layer; rows it cannot take)
        ((32, 256, 56, 56), 256, 1, torch.bfloat16, True, "nchw", False, "cudnn", "fused"),
        ((128, 64, 126, 126), 128, 3, torch.float16, True, "nchw", False, "cudnn", "fused"),
        # 16-bit above K = 1152: the patch kernel on rows longer than 128 bytes only
        ((16, 256, 56, 56), 256, 3, torch.bfloat16, True, "nchw", True, "cudnn", "fused"),
        ((8, 256, 112, 112), 256, 3, torch.bfloat16, True, "nchw", True, "patch", "patch"),
        ((16, 256, 56, 56), 256, 3, torch.float32, True, "nchw", True, "patch", "patch"),
        # from 16 output channels
        ((32, 32, 128, 128), 32, 3, torch.float32, True, "nchw", True, "patch", "patch"),
        ((32, 32, 128, 128), 32, 3, torch.bfloat16, True, "nchw", True, "patch", "patch"),
        ((32, 64, 58, 58), 16, 3, torch.bfloat16, True, "nchw", True, "patch", "patch"),
        ((32, 64, 58, 58), 8, 3, torch.bfloat16, True, "nchw", True, "cudnn", "fused"),
        # fp32 up to K = 3456 (5x5 from 128 channels); 4608 on cuDNN
        ((16, 128, 68, 68), 128, 5, torch.float32, True, "nchw", True, "patch", "patch"),
        ((32, 512, 30, 30), 512, 3, torch.float32, True, "nchw", True, "cudnn", "fused"),
        ((128, 64, 128, 128), 128, 3, torch.float32, True, "nchw", False, "fused", "fused"),
        # 3 and 8 input channels: the K-table kernel, but for exact fp32
        ((1, 3, 16, 16), 16, 3, torch.float32, True, "nchw", False, "fused", "fused"),
        ((1, 3, 16, 16), 16, 3, torch.float32, False, "nchw", False, "cudnn", "fused"),
        ((64, 8, 64, 64), 32, 3, torch.float32, False, "cl", True, "cudnn", "fused"),
        ((1, 16, 16, 16), 16, 3, torch.float32, True, "nchw", True, "cudnn", "fused"),  # one tile
        # channels-last input: the patch kernel where it pays, else cuDNN
        ((128, 64, 128, 128), 128, 3, torch.float32, True, "cl", True, "patch", "patch"),
        ((128, 64, 128, 128), 128, 3, torch.bfloat16, True, "cl", True, "patch", "patch"),
        ((128, 64, 128, 128), 64, 3, torch.float32, True, "cl", True, "patch", "patch"),
        # 16-bit at 64 output channels: where the output rows fill the tiles' rows
        ((128, 64, 128, 128), 64, 3, torch.bfloat16, True, "cl", True, "patch", "patch"),
        ((128, 64, 56, 56), 64, 3, torch.bfloat16, True, "cl", True, "cudnn", "fused"),
        ((32, 64, 56, 56), 64, 3, torch.float32, True, "cl", True, "cudnn", "fused"),
        ((32, 8, 64, 64), 32, 3, torch.float32, True, "cl", True, "fused", "fused"),  # 8 channels
        # exact fp32 (3xTF32 on the tensor cores) up to K = 4608; beyond, cuDNN's fp32
        # arithmetic wherever the cuDNN path may run
        ((32, 512, 28, 28), 128, 3, torch.float32, False, "nchw", True, "patch", "patch"),
        ((32, 576, 28, 28), 128, 3, torch.float32, False, "nchw", True, "cudnn", "patch"),
        ((32, 576, 28, 28), 128, 3, torch.float32, True, "nchw", True, "cudnn", "fused"),
        ((32, 576, 28, 28), 128, 3, torch.bfloat16, False, "nchw", True, "cudnn", "fused"),
    ],
)
def test_path_choice(
    monkeypatch, x_shape, cout, k, dtype, tf32, layout, patch_runs, expected, without_cudnn
):
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    x = torch.empty(x_shape, dtype=dtype, device="meta")
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.empty(cout, x_shape[1], k, k, dtype=dtype, device="meta")
    out_shape = ops.output_shape(x, w, [1, 1], [0, 0], [1, 1])
    assert _cuda._path(x, w, out_shape, [1, 1], tf32, H100_SMS, patch_runs) == expected
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
    assert _cuda._path(x, w, out_shape, [1, 1], tf32, H100_SMS, patch_runs) == without_cudnn


def test_direct_kernel_size_rule():
    # dense convolutions of at most 2^23 multiply-adds and 2^17 outputs, in either layout
    # and at any stride
    for cl, strided in ((False, False), (True, False), (False, True)):
        assert _cuda._direct_pays(16 * 16 * 16 * 144, 16 * 16 * 16, 1, 16, cl, strided)  # 16 px
        assert _cuda._direct_pays(1 << 23, 1 << 17, 1, 64, cl, strided)
        assert not _cuda._direct_pays((1 << 23) + 1, 1 << 10, 1, 64, cl, strided)
        assert not _cuda._direct_pays(1 << 20, (1 << 17) + 1, 1, 64, cl, strided)
        # grouped: the depthwise kernels or cuDNN
        assert not _cuda._direct_pays(1 << 10, 1 << 10, 2, 64, cl, strided)
    # NCHW stride-1 layers of at most 32 output channels, K x channels <= 1152 and 2^20
    # outputs or more
    kernelbench = 128 * 16 * 30 * 30  # outputs of 3 -> 16 channels at 32 px, 128 images
    assert _cuda._direct_pays(kernelbench * 27, kernelbench, 1, 16, False, False)
    assert _cuda._direct_pays(kernelbench * 2 * 27, kernelbench * 2, 1, 32, False, False)
    assert _cuda._direct_pays((1 << 30) * 72, 1 << 30, 1, 16, False, False)  # 8 -> 16
    assert _cuda._direct_pays((1 << 30) * 36, 1 << 30, 1, 32, False, False)  # 4 -> 32
    assert not _cuda._direct_pays((1 << 30) * 37, 1 << 30, 1, 32, False, False)  # K = 37
    assert not _cuda._direct_pays(kernelbench * 73, kernelbench, 1, 16, False, False)  # K = 73
    assert not _cuda._direct_pays(kernelbench * 9, kernelbench, 1, 33, False, False)  # 33 channels
    assert not _cuda._direct_pays(kernelbench * 27, kernelbench, 1, 16, True, False)  # channels-last
    assert not _cuda._direct_pays(kernelbench * 27, kernelbench, 1, 16, False, True)  # strided
    assert not _cuda._direct_pays(kernelbench * 27, kernelbench, 2, 16, False, False)  # grouped
    # fewer outputs
    assert not _cuda._direct_pays((1 << 20) * 27 - 27, (1 << 20) - 1, 1, 16, False, False)


def test_cudnn_path_can_be_disabled(monkeypatch):
    monkeypatch.delenv("FX_FUSE_DISABLE_CUDNN", raising=False)
    assert _cuda._cudnn_enabled()
    monkeypatch.setenv("FX_FUSE_DISABLE_CUDNN", "1")
    assert not _cuda._cudnn_enabled()


class _H100Properties:
    major, minor, multi_processor_count = 9, 0, H100_SMS


@pytest.fixture
def h100_planner(monkeypatch):
    """The planner as on an H100, every path allowed."""
    for switch in ("FX_FUSE_DISABLE_PATCH", "FX_FUSE_DISABLE_CUDNN", "FX_FUSE_DISABLE_WGMMA"):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.setattr(_cuda, "_device_properties", lambda device: _H100Properties)


@pytest.mark.parametrize(
    "dtype,layout,expected",
    [
        (torch.float32, "nchw", ("patch", False, False, True)),
        (torch.bfloat16, "nchw", ("patch", False, False, True)),
        (torch.float32, "cl", ("patch", True, True, True)),
    ],
)
def test_plan_for_the_cpp_kernel(h100_planner, monkeypatch, dtype, layout, expected):
    """The planner's answer (path, input and output layouts, Hopper) for the headline."""
    monkeypatch.setattr(_cuda, "_patch_runs", lambda *args: True)  # the binding takes it
    x = torch.empty(128, 64, 128, 128, dtype=dtype, device="meta")
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.empty(128, 64, 3, 3, dtype=dtype, device="meta")
    b, other = torch.empty(128, dtype=dtype, device="meta"), ops.scalar_other(0.5)
    assert _cuda.plan(x, w, b, other, [1, 1], [0, 0], [1, 1], 1) == expected


@pytest.mark.parametrize(
    "x_shape,cout,k,stride,dtype,reads_channels_last",
    [
        ((16, 256, 56, 56), 256, 3, 1, torch.bfloat16, True),  # VGG at 56 px
        ((16, 256, 56, 56), 256, 3, 1, torch.float32, True),
        ((32, 128, 56, 56), 256, 3, 2, torch.bfloat16, True),  # stride 2
        ((32, 128, 28, 28), 128, 3, 1, torch.bfloat16, True),  # ResNet 28 px
        ((32, 256, 14, 14), 256, 3, 1, torch.float32, False),  # planes under 28 x 28
        ((32, 256, 56, 56), 256, 1, 1, torch.bfloat16, False),  # 1x1: cuDNN's GEMM kernel
        ((16, 64, 64, 64), 64, 7, 1, torch.float32, False),  # 7x7: a kernel of its own
        ((16, 36, 56, 56), 64, 3, 1, torch.float16, False),  # channels not 16-byte chunks
    ],
)
def test_plan_reads_nchw_input_channels_last_on_cudnns_path(
    h100_planner, monkeypatch, x_shape, cout, k, stride, dtype, reads_channels_last
):
    """cuDNN's path reads an NCHW input channels-last (its NHWC kernel without cuDNN's own
    transposes) on 3x3 layers whose planes and channels the transposes take; the output
    stays NCHW."""
    monkeypatch.setattr(_cuda, "_patch_runs", lambda *args: False)
    monkeypatch.setattr(_cuda, "_path", lambda *args: "cudnn")
    x = torch.empty(*x_shape, dtype=dtype, device="meta")
    w = torch.empty(cout, x_shape[1], k, k, dtype=dtype, device="meta")
    b, other = torch.empty(cout, dtype=dtype, device="meta"), ops.scalar_other(0.5)
    pad = k // 2
    plan = _cuda.plan(x, w, b, other, [stride, stride], [pad, pad], [1, 1], 1)
    assert plan == ("cudnn", reads_channels_last, False, True)


def test_plan_reads_channels_last_only_on_cudnns_path(h100_planner, monkeypatch):
    """The other paths read an NCHW input as it is; so does exact fp32 on cuDNN's path
    (not measured there), and a channels-last input stays channels-last."""
    monkeypatch.setattr(_cuda, "_patch_runs", lambda *args: False)
    x = torch.empty(16, 256, 56, 56, device="meta")
    w = torch.empty(256, 256, 3, 3, device="meta")
    b, other = torch.empty(256, device="meta"), ops.scalar_other(0.5)
    args = (x, w, b, other, [1, 1], [1, 1], [1, 1], 1)
    monkeypatch.setattr(_cuda, "_path", lambda *a: "fused")
    assert _cuda.plan(*args) == ("fused", False, False, True)
    monkeypatch.setattr(_cuda, "_path", lambda *a: "cudnn")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert _cuda.plan(*args) == ("cudnn", False, False, True)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert _cuda.plan(cl, *args[1:]) == ("cudnn", True, True, True)


def test_plan_asks_the_binding_before_the_patch_kernel(h100_planner, monkeypatch):
    """Where the binding does not take the input on the patch kernel, the other rules pick
    (the headline: the K-table kernel), not the patch kernel's size rule."""
    asked = []

    def refuse(*args):
        asked.append(args)
        return False

    monkeypatch.setattr(_cuda, "_patch_runs", refuse)
    x = torch.empty(128, 64, 128, 128, device="meta")
    w = torch.empty(128, 64, 3, 3, device="meta")
    b, other = torch.empty(128, device="meta"), ops.scalar_other(0.5)
    assert _cuda.plan(x, w, b, other, [1, 1], [0, 0], [1, 1], 1) == ("fused", False, False, True)
    assert len(asked) == 1 and asked[0][2:] == ([1, 1], [0, 0], [1, 1])
    monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")  # not asked where it may not run
    _cuda.plan(x, w, b, other, [1, 1], [0, 0], [1, 1], 1)
    assert len(asked) == 1


def test_plan_picks_the_direct_kernel_for_small_convolutions(h100_planner, monkeypatch):
    """The direct kernel where its rule says and the binding takes the sizes; else the
    other rules (one 16 px image: the cuDNN path)."""
    asked = []
    monkeypatch.setattr(_cuda, "_direct_runs", lambda *args: asked.append(args) or True)
    monkeypatch.setattr(_cuda, "_patch_runs", lambda *args: False)
    x = torch.empty(1, 16, 16, 16, device="meta")
    w = torch.empty(16, 16, 3, 3, device="meta")
    b, other = torch.empty(16, device="meta"), ops.scalar_other(0.5)
    assert _cuda.plan(x, w, b, other, [1, 1], [1, 1], [1, 1], 1) == ("direct", False, False, True)
    assert len(asked) == 1 and asked[0][2:] == ([1, 1], [1, 1], [1, 1])
    monkeypatch.setattr(_cuda, "_direct_runs", lambda *args: False)
    assert _cuda.plan(x, w, b, other, [1, 1], [1, 1], [1, 1], 1)[0] == "cudnn"
    # past the rule (2^17 outputs): the binding is not asked
    x = torch.empty(129, 16, 32, 32, device="meta")
    monkeypatch.setattr(_cuda, "_direct_runs", lambda *args: asked.append(args) or True)
    assert _cuda.plan(x, w, b, other, [1, 1], [1, 1], [1, 1], 1)[0] != "direct"
    assert len(asked) == 1


def test_plan_runs_the_reference_where_the_kernels_do_not_apply(monkeypatch):
    monkeypatch.setattr(_cuda, "_device_properties", lambda device: _H100Properties)
    monkeypatch.setattr(_cuda, "_warned", set())  # announced once per process
    x = torch.empty(2, 8, 9, 9, dtype=torch.float64, device="meta")
    w = torch.empty(4, 8, 3, 3, dtype=torch.float64, device="meta")
    with pytest.warns(UserWarning, match="reference"):
        out = _cuda.plan(x, w, None, ops.scalar_other(1.0), [1, 1], [0, 0], [1, 1], 1)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, 7, 7)


def test_plan_raises_the_ops_errors(monkeypatch):
    monkeypatch.setattr(_cuda, "_device_properties", lambda device: _H100Properties)
    x = torch.empty(2, 8, 9, 9, device="meta")
    w = torch.empty(4, 7, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="fx_fuse::conv2d_relu_add: expected `input` to have"):
        _cuda.plan(x, w, None, ops.scalar_other(1.0), [1, 1], [0, 0], [1, 1], 1)
