"""Small launches of every kernel variant, for compute-sanitizer (memcheck, racecheck)."""

import os

import torch
import torch.nn.functional as F

import fx_fuse
from fx_fuse import _cuda, ops

OP = torch.ops.fx_fuse.conv2d_relu_add.default


def case(n, c, h, w, cout, k, stride, pad, dil, dtype, cl, tf32, other_kind, inf_weight=False,
         groups=1):
    torch.backends.cudnn.allow_tf32 = tf32
    x = torch.randn(n, c, h, w, device="cuda").to(dtype)
    wt = (torch.randn(cout, c // groups, k, k, device="cuda") / (c * k * k) ** 0.5).to(dtype)
    if inf_weight:  # output channel 1 is +-Inf (or NaN) everywhere; the others compare
        wt[1, 0, 0, 0] = float("inf")
    b = torch.randn(cout, device="cuda").to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    args = ([stride] * 2, [pad] * 2, [dil] * 2)
    oh, ow = ops.output_shape(x, wt, *args)[2:]
    other = {
        "full": torch.randn(n, cout, oh, ow, device="cuda").to(dtype),
        "chan": torch.randn(cout, 1, 1, device="cuda").to(dtype),
        "scalar": ops.scalar_other(0.5),
    }[other_kind]
    out = OP(x, wt, b, other, *args, groups)
    ref = torch.relu(F.conv2d(x.double(), wt.double(), b.double(), *args, groups)) + (
        other.double() if other.device.type == "cuda" else other.item()
    )
    finite = torch.isfinite(ref).all(dim=(0, 2, 3))  # the channels without Inf or NaN
    rel = ((out.double() - ref)[:, finite].norm() / ref[:, finite].norm()).item()
    print(f"{str(dtype):15s} cl={cl!s:5} tf32={tf32!s:5} C={c:3d} Cout={cout:3d} rel={rel:.2e}")
    assert rel < 2e-2


torch.manual_seed(0)
_cuda._direct_pays = lambda *args: False  # the direct kernel last; it would take these sizes
os.environ["FX_FUSE_DISABLE_CUDNN"] = "1"  # the fused kernels first
for dtype, tf32 in ((torch.float32, True), (torch.float32, False), (torch.float16, True),
                    (torch.bfloat16, True)):
    for cl in (False, True):
        case(2, 8, 11, 13, 130, 3, 1, 1, 1, dtype, cl, tf32, "full")
        case(1, 3, 9, 9, 7, 3, 2, 0, 2, dtype, cl, tf32, "chan")
        case(2, 16, 6, 5, 40, 1, 1, 0, 1, dtype, cl, tf32, "scalar")
    # the patch kernel (Hopper; below its size rule, which is bypassed here), NCHW and
    # channels-last: two column tiles, a partial channel block, two channel tiles
    # (channels-last: 136, whose output rows the copy engine can write); tiles of 32
    # columns; NCHW tiles of whole 30-pixel rows, two per CTA on 132 SMs (their output,
    # TF32: its first 72 channels, leaves through the copy engine; the second channel
    # tile has 2), and of whole 126-pixel rows (TF32: A read from the transposed patch,
    # as in the first case); then 64-channel tiles (at most 64 output channels)
    pays = _cuda._patch_pays
    _cuda._patch_pays = lambda *args: True
    _cuda.forget_plans()
    case(2, 80, 5, 136, 130, 3, 1, 1, 1, dtype, False, tf32, "full")
    case(2, 80, 5, 136, 136, 3, 1, 1, 1, dtype, True, tf32, "chan")
    case(2, 40, 9, 20, 136, 3, 1, 1, 1, dtype, True, tf32, "full")
    case(16, 40, 66, 30, 130, 3, 1, 1, 1, dtype, False, tf32, "full")
    case(66, 40, 6, 126, 130, 3, 1, 1, 1, dtype, False, tf32, "chan")
    case(2, 80, 5, 136, 40, 3, 1, 1, 1, dtype, False, tf32, "chan")
    case(2, 80, 5, 136, 40, 3, 1, 1, 1, dtype, True, tf32, "full")
    if dtype == torch.float32 and not tf32:  # 3xTF32 with a third weight set
        case(2, 80, 5, 136, 130, 3, 1, 1, 1, dtype, False, tf32, "chan", inf_weight=True)
        case(2, 80, 5, 136, 40, 3, 1, 1, 1, dtype, True, tf32, "full", inf_weight=True)
        case(2, 80, 5, 136, 136, 3, 1, 1, 1, dtype, True, tf32, "chan", inf_weight=True)
    _cuda._patch_pays = pays
    _cuda.forget_plans()
# the cuDNN path's epilogue pass, NCHW and channels-last
del os.environ["FX_FUSE_DISABLE_CUDNN"]
_cuda._cudnn_pays = lambda *args: True
_cuda.forget_plans()
for dtype in (torch.float32, torch.bfloat16):
    for cl in (False, True):
        case(2, 16, 7, 9, 24, 3, 1, 1, 1, dtype, cl, True, "full")
        case(2, 16, 7, 9, 24, 3, 1, 1, 1, dtype, cl, True, "chan")
        case(2, 16, 7, 9, 24, 3, 1, 1, 1, dtype, cl, True, "scalar")
        case(2, 16, 8, 8, 24, 3, 1, 1, 1, dtype, cl, True, "chan")  # 16-byte groups
        # grouped convolutions: cuDNN's grouped convolution, then the epilogue pass
        case(2, 32, 12, 12, 32, 3, 1, 1, 1, dtype, cl, True, "full", groups=32)
        case(2, 8, 9, 11, 12, 5, 2, 2, 2, dtype, cl, True, "chan", groups=2)
# the depthwise kernels: partial tiles, six filters per channel, strided and dilated (sizes
# at run time); its compiled sizes with rows by 16-byte loads (W a multiple of 8); groups
# of 4 channels; channels-last input
_cuda._depthwise_pays = lambda *args: True
_cuda.forget_plans()
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    case(2, 32, 40, 45, 32, 3, 1, 1, 1, dtype, False, True, "full", groups=32)
    case(2, 3, 20, 33, 18, 5, 1, 2, 1, dtype, False, True, "chan", groups=3)
    case(1, 8, 33, 65, 8, 3, 2, 2, 2, dtype, False, True, "scalar", groups=8)
    case(1, 8, 66, 72, 16, 3, 1, 1, 1, dtype, False, True, "full", groups=8)
    case(2, 8, 30, 32, 8, 5, 2, 2, 1, dtype, False, True, "chan", groups=8)
    case(1, 4, 24, 40, 4, 7, 1, 3, 1, dtype, False, True, "full", groups=4)
    case(2, 32, 20, 24, 32, 3, 1, 1, 1, dtype, False, True, "full", groups=8)
    case(2, 8, 9, 11, 12, 5, 2, 2, 2, dtype, False, True, "chan", groups=2)
    # the channels-last kernel: 3x3 tiles past the plane's edges, 5x5 stride 2, 7x7 in chunks
    case(2, 24, 9, 13, 24, 3, 1, 1, 1, dtype, True, True, "full", groups=24)
    case(1, 16, 13, 12, 16, 5, 2, 0, 1, dtype, True, True, "scalar", groups=16)
    case(1, 512, 9, 10, 512, 7, 1, 3, 1, dtype, True, True, "chan", groups=512)
# the direct kernel: dense and grouped, both layouts, padding past the kernel, stride and
# dilation, several rows per block, several lanes per output (64 channels of 4 x 4 pixels),
# eight channels of four rows a thread
_cuda._direct_pays = lambda *args: True
_cuda.forget_plans()
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for cl in (False, True):
        case(2, 5, 7, 9, 6, 3, 1, 2, 1, dtype, cl, True, "full")
        case(1, 8, 13, 11, 12, 5, 2, 1, 2, dtype, cl, True, "chan", groups=2)
        case(3, 64, 4, 4, 16, 3, 1, 0, 1, dtype, cl, True, "scalar")
        case(2, 16, 16, 16, 16, 3, 1, 1, 1, dtype, cl, True, "full", groups=16)
        # eight channels of four rows a thread (past 2^17 outputs): 3x3 and 5x5 taps, a
        # partial group of channels, a band's last rows not a multiple of four, two channel
        # blocks, two groups
        case(4, 3, 64, 64, 12, 3, 1, 1, 1, dtype, cl, True, "full")
        case(4, 3, 63, 50, 16, 3, 1, 0, 1, dtype, cl, True, "chan")
        case(3, 4, 60, 50, 80, 5, 2, 2, 1, dtype, cl, True, "chan")
        case(2, 6, 48, 48, 32, 3, 1, 1, 2, dtype, cl, True, "scalar", groups=2)
torch.cuda.synchronize()
print("sanitize cases done")
