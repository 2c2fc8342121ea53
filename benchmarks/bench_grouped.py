"""The op's two paths for grouped convolutions, each forced, per shape: the depthwise kernel
of the input's layout (where it takes the sizes) and the cuDNN path (cuDNN's grouped
convolution, then one bias + relu + add pass), beside eager PyTorch. Prints GPU kernel
time, do_bench medians (L2 flushed), and which path the op's rule
(``fx_fuse._cuda._grouped_path``) picks. The evidence behind ``_depthwise_pays``.

    python benchmarks/bench_grouped.py
    python benchmarks/bench_grouped.py --only channels_last
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_ms, conv_inputs, gpu_us, table  # noqa: E402

import fx_fuse  # noqa: E402
from fx_fuse import _cuda  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
PATHS = ("depthwise", "cudnn")

# (name, (N, C, H, W), Cout, groups, k, stride, dtype); "channels_last" in the name: the
# input and weight in that layout. Padding k // 2.
SHAPES = [
    ("depthwise 3x3 56px", (32, 144, 56, 56), 144, 144, 3, 1, F32),
    ("depthwise 3x3 56px", (32, 144, 56, 56), 144, 144, 3, 1, BF16),
    ("depthwise 3x3 28px", (32, 192, 28, 28), 192, 192, 3, 1, F32),
    ("depthwise 3x3 14px", (32, 576, 14, 14), 576, 576, 3, 1, F32),
    ("depthwise 3x3 7px", (32, 960, 7, 7), 960, 960, 3, 1, F32),
    ("depthwise 5x5 14px", (32, 480, 14, 14), 480, 480, 5, 1, F32),
    ("depthwise 5x5 s2 28px", (32, 240, 28, 28), 240, 240, 5, 2, F32),
    ("depthwise 7x7 56px", (32, 128, 56, 56), 128, 128, 7, 1, F32),
    ("depthwise x2 56px", (32, 64, 56, 56), 128, 64, 3, 1, F32),
    ("32 groups of 4 56px", (32, 128, 56, 56), 128, 32, 3, 1, F32),
    ("32 groups of 4 56px", (32, 128, 56, 56), 128, 32, 3, 1, BF16),
    ("64 groups of 2 56px", (32, 128, 56, 56), 128, 64, 3, 1, F32),
    ("32 groups of 8 28px", (32, 256, 28, 28), 256, 32, 3, 1, F32),
    ("32 groups of 4 s2 56px", (32, 128, 56, 56), 128, 32, 3, 2, F32),
    ("depthwise 3x3 56px channels_last", (32, 144, 56, 56), 144, 144, 3, 1, F32),
    ("depthwise 3x3 56px channels_last", (32, 144, 56, 56), 144, 144, 3, 1, F16),
    ("depthwise 3x3 56px channels_last", (32, 144, 56, 56), 144, 144, 3, 1, BF16),
    ("depthwise 3x3 112px channels_last", (32, 32, 112, 112), 32, 32, 3, 1, F16),
    ("depthwise 3x3 s2 112px channels_last", (32, 96, 112, 112), 96, 96, 3, 2, F16),
    ("depthwise 3x3 14px channels_last", (32, 576, 14, 14), 576, 576, 3, 1, F16),
    ("depthwise 3x3 7px channels_last", (32, 960, 7, 7), 960, 960, 3, 1, F16),
    ("depthwise 5x5 s2 28px channels_last", (32, 240, 28, 28), 240, 240, 5, 2, F16),
    ("depthwise 7x7 56px channels_last", (32, 96, 56, 56), 96, 96, 7, 1, F32),
    ("depthwise 7x7 56px channels_last", (32, 96, 56, 56), 96, 96, 7, 1, F16),
    ("depthwise 7x7 14px channels_last", (32, 384, 14, 14), 384, 384, 7, 1, F16),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="the shapes whose name contains this")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    rows = []
    pays = _cuda._depthwise_pays
    for name, x_shape, cout, groups, k, stride, dtype in SHAPES:
        if args.only not in name:
            continue
        x, w, b, other = conv_inputs(
            x_shape, cout, k, dtype, groups=groups, channels_last="channels_last" in name
        )
        conv_args = ([stride] * 2, [k // 2] * 2, [1, 1], groups)

        def op():
            return fx_fuse.conv2d_relu_add(x, w, b, other, *conv_args)

        def eager():
            return torch.relu(F.conv2d(x, w, b, *conv_args)) + other

        fits = _cuda._extension().depthwise_kernel_fits(x, w, *conv_args[:3])
        times, outs = {}, {}
        with torch.no_grad():
            for path in PATHS:
                if path == "depthwise" and not fits:
                    times[path] = (float("nan"), float("nan"))
                    continue
                _cuda._depthwise_pays = lambda *args, on=path == "depthwise": on
                _cuda.forget_plans()  # plan again under the replaced rule
                try:
                    outs[path] = op().float()
                    times[path] = (gpu_us(op)[0], bench_ms(op)["ms"] * 1e3)
                finally:
                    _cuda._depthwise_pays = pays
                    _cuda.forget_plans()
            times["eager"] = (gpu_us(eager)[0], bench_ms(eager)["ms"] * 1e3)
        out_shape = fx_fuse.ops.output_shape(x, w, *conv_args[:3])
        rule = _cuda._grouped_path(x, w, out_shape, *conv_args[:3])
        diff = (outs["depthwise"] - outs["cudnn"]).abs().max().item() if fits else float("nan")
        label = str(dtype).replace("torch.", "")
        rows.append([name, label, *(t for p in (*PATHS, "eager") for t in times[p]), rule, diff])
        print(rows[-1], flush=True)
    units = [f"{p} {unit}" for p in (*PATHS, "eager") for unit in ("GPU us", "us")]
    print(table(rows, ["shape", "dtype", *units, "rule picks", "max |depthwise - cudnn|"]))


if __name__ == "__main__":
    main()
