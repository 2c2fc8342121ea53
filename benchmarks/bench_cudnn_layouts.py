"""cuDNN's path on NCHW layers in its two layouts, each forced: NCHW data (cuDNN transposes
the input to NHWC and the result back around its kernel, then our epilogue pass) and
channels-last data (our input transpose, the weights' copy, cuDNN's NHWC kernel, our
epilogue pass writing NCHW). Per layer: each plan's error against float64, the op's
do_bench median, its GPU time and each kernel's share. The evidence behind
``fx_fuse._cuda._cudnn_reads_channels_last`` (docs/performance.md, v74-v81).

    python benchmarks/bench_cudnn_layouts.py
    python benchmarks/bench_cudnn_layouts.py --only VGG
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_ms, conv_inputs, gpu_us, table  # noqa: E402

from fx_fuse import _cuda, ops  # noqa: E402

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# (name, (N, C, H, W), Cout, k, stride, padding, dtype): the rule's layers, then two it
# leaves NCHW (a plane under 28 x 28; 1x1 and 7x7 layers, which run other cuDNN kernels)
LAYERS = [
    ("VGG 256 ch 56px b16", (16, 256, 56, 56), 256, 3, 1, 1, BF16),
    ("VGG 256 ch 56px b16", (16, 256, 56, 56), 256, 3, 1, 1, FP32),
    ("256 ch 28px b64", (64, 256, 28, 28), 256, 3, 1, 1, FP16),
    ("s2 128 -> 256 56px b32", (32, 128, 56, 56), 256, 3, 2, 1, BF16),
    ("resnet 56px b32", (32, 64, 56, 56), 64, 3, 1, 1, FP16),
    ("resnet 28px b32", (32, 128, 28, 28), 128, 3, 1, 1, BF16),
    ("resnet 14px b32 (NCHW: plane)", (32, 256, 14, 14), 256, 3, 1, 1, FP32),
    ("1x1 256 -> 256 56px b32 (NCHW: 1x1)", (32, 256, 56, 56), 256, 1, 1, 0, BF16),
    ("7x7 64px b16 (NCHW: 7x7)", (16, 64, 64, 64), 64, 7, 1, 3, FP32),
]

# the kernels' names as the profiler gives them, shortened for the table
# (the weights' copy before the passes: both names end in transpose_kernel)
_SHORT = (("filter_transpose", "weights"), ("transpose_kernel", "ours"), ("conv_epilogue", "epilogue"),
          ("nchwToNhwc", "to NHWC"), ("nhwcToNchw", "to NCHW"), ("elementwise", "copy"),
          ("xmma_fprop", "conv"), ("cudnn", "cudnn"), ("nvjet", "conv"))


def rule_reads_channels_last(x_shape, cout, k, stride, padding, dtype) -> bool:
    """Whether the planner's rule sends this NCHW layer through channels-last data."""
    x = torch.empty(*x_shape, dtype=dtype, device="meta")
    w = torch.empty(cout, x_shape[1], k, k, dtype=dtype, device="meta")
    out_shape = ops.output_shape(x, w, [stride] * 2, [padding] * 2, [1, 1])
    return _cuda._cudnn_reads_channels_last(x, w, out_shape, [stride] * 2, [1, 1], 1)


def kernel_split(kernels) -> str:
    """'name us; ...' for the kernels of a call that take 1 us or more."""
    def short(name: str) -> str:
        return next((s for key, s in _SHORT if key in name), name[:16])

    return "; ".join(f"{short(name)} {us:.1f}" for name, us in kernels if us >= 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="the layers whose name contains this")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = True
    ext = _cuda._extension()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    rows = []
    for name, x_shape, cout, k, stride, padding, dtype in LAYERS:
        if args.only not in name:
            continue
        x, w, b, other = conv_inputs(x_shape, cout, k, dtype)
        conv_args = (x, w, b, other, [stride] * 2, [padding] * 2, [1, 1], 1)
        with torch.no_grad():
            ref = torch.relu(F.conv2d(x.double(), w.double(), b.double(), stride, padding))
            ref += other.double()
            scale = ref.abs().max().item()
            row = [name, str(dtype).replace("torch.", ""),
                   rule_reads_channels_last(x_shape, cout, k, stride, padding, dtype)]
            gpu = []  # the GPU us of the NCHW plan, then of the channels-last one
            for channels_last in (False, True):
                def op(cl=channels_last):
                    return ext.run_plan(("cudnn", cl, False, True), *conv_args)

                err = (op().double() - ref).abs().max().item() / scale
                total, kernels = gpu_us(op)
                gpu.append(total)
                row += [err, bench_ms(op)["ms"], total, kernel_split(kernels)]
            row.append(gpu[1] / gpu[0])
        rows.append(row)
        del x, w, b, other, conv_args, ref
        torch.cuda.empty_cache()
    print(table(rows, ["layer", "dtype", "rule: CL", "err NCHW", "NCHW ms", "NCHW GPU us",
                       "NCHW kernels (us)", "err CL", "CL ms", "CL GPU us", "CL kernels (us)",
                       "CL / NCHW GPU"]))


if __name__ == "__main__":
    main()
