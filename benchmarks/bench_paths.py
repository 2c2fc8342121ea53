"""The op's four paths, each forced, per conv shape: the direct kernel and the patch kernel
(where the binding finds it can run the arguments), the K-table kernel, and the cuDNN path
(cuDNN's convolution, then one bias + relu + add pass), beside eager PyTorch. Prints
do_bench medians (L2 flushed), GPU kernel time, and which path the op's planner
(``fx_fuse._cuda.plan``) picks. The evidence behind its rules.

    python benchmarks/bench_paths.py
    python benchmarks/bench_paths.py --only resnet
    python benchmarks/bench_paths.py --unseen    # layers no rule was measured on
    python benchmarks/bench_paths.py --random 40 --seed 1  # 40 layers drawn at random
    python benchmarks/bench_paths.py --cudnn-benchmark  # cuDNN's benchmark mode, every
        # path and eager; the op's pick is then timed (fx_fuse._autotune), and the first
        # call's milliseconds, the timing included, and the planner's timings are printed
        # beside it
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_ms, conv_inputs, gpu_us, table  # noqa: E402

import fx_fuse  # noqa: E402
from fx_fuse import _autotune, _cuda  # noqa: E402

BF16, TF32_OFF = torch.bfloat16, "tf32 off"
# the op's paths as the planner names them ("fused": the K-table kernel)
PATHS = ("direct", "patch", "fused", "cudnn")

# (name, (N, C, H, W), Cout, k, stride, padding, dtype or TF32_OFF); "channels_last" in the
# name: the input and weight in that layout
SHAPES = [
    ("headline", (128, 64, 128, 128), 128, 3, 1, 0, torch.float32),
    ("headline", (128, 64, 128, 128), 128, 3, 1, 0, BF16),
    ("headline", (128, 64, 128, 128), 128, 3, 1, 0, TF32_OFF),
    ("headline channels_last", (128, 64, 128, 128), 128, 3, 1, 0, torch.float32),
    ("headline channels_last", (128, 64, 128, 128), 128, 3, 1, 0, BF16),
    ("headline, 64 out", (128, 64, 128, 128), 64, 3, 1, 0, torch.float32),
    ("headline, 64 out", (128, 64, 128, 128), 64, 3, 1, 0, BF16),
    ("headline channels_last, 64 out", (128, 64, 128, 128), 64, 3, 1, 0, torch.float32),
    ("headline channels_last, 64 out", (128, 64, 128, 128), 64, 3, 1, 0, BF16),
    ("headline channels_last, 64 out", (128, 64, 128, 128), 64, 3, 1, 0, torch.float16),
    # 16-bit channels-last layers of 64 output channels, which the patch rule leaves to
    # cuDNN's path (its 64-channel tiles lost there before the staged output)
    ("56px b128 channels_last, 64 out", (128, 64, 56, 56), 64, 3, 1, 1, BF16),
    ("112px b32 channels_last, 64 out", (32, 64, 112, 112), 64, 3, 1, 1, BF16),
    ("224px b16 channels_last, 64 out", (16, 64, 224, 224), 64, 3, 1, 1, BF16),
    ("224px b32 channels_last, 64 out", (32, 64, 224, 224), 64, 3, 1, 1, BF16),
    ("128px b64 channels_last, 64 out", (64, 64, 128, 128), 64, 3, 1, 0, BF16),
    ("128px b128 padding 1 channels_last, 64 out", (128, 64, 128, 128), 64, 3, 1, 1, BF16),
    ("128px b256 channels_last, 64 out", (256, 64, 128, 128), 64, 3, 1, 0, BF16),
    ("resnet 56px b128 channels_last", (128, 64, 56, 56), 64, 3, 1, 1, torch.float32),
    ("resnet 56px b32, 256 out", (32, 64, 56, 56), 256, 3, 1, 1, torch.float32),
    ("128 channels 64px b64", (64, 128, 64, 64), 128, 3, 1, 1, torch.float32),
    ("128 channels 64px b64", (64, 128, 64, 64), 128, 3, 1, 1, BF16),
    ("resnet 56px b128, 128 out", (128, 64, 56, 56), 128, 3, 1, 1, torch.float32),
    ("resnet 56px b128, 128 out", (128, 64, 56, 56), 128, 3, 1, 1, BF16),
    ("128 channels 128px b32", (32, 128, 128, 128), 128, 3, 1, 1, torch.float32),
    ("128 channels 128px b32", (32, 128, 128, 128), 128, 3, 1, 1, BF16),
    ("resnet 28px b256", (256, 128, 28, 28), 128, 3, 1, 1, torch.float32),
    ("resnet 28px b256", (256, 128, 28, 28), 128, 3, 1, 1, BF16),
    ("resnet 14px b512", (512, 256, 14, 14), 256, 3, 1, 1, torch.float32),
    ("256 channels 32px b128", (128, 256, 32, 32), 256, 3, 1, 1, torch.float32),
    ("256 channels 32px b128", (128, 256, 32, 32), 256, 3, 1, 1, BF16),
    ("512 channels 16px b256", (256, 512, 16, 16), 512, 3, 1, 1, torch.float32),
    ("32 channels 128px b32, 32 out", (32, 32, 128, 128), 32, 3, 1, 1, torch.float32),
    ("32 channels 128px b32, 32 out", (32, 32, 128, 128), 32, 3, 1, 1, BF16),
    ("resnet 56px b32", (32, 64, 56, 56), 64, 3, 1, 1, torch.float32),
    ("resnet 56px b32", (32, 64, 56, 56), 64, 3, 1, 1, BF16),
    ("resnet 56px b128", (128, 64, 56, 56), 64, 3, 1, 1, torch.float32),
    ("resnet 56px b8", (8, 64, 56, 56), 64, 3, 1, 1, torch.float32),
    ("resnet 56px b8", (8, 64, 56, 56), 64, 3, 1, 1, BF16),
    ("resnet 28px b32", (32, 128, 28, 28), 128, 3, 1, 1, torch.float32),
    ("resnet 28px b32", (32, 128, 28, 28), 128, 3, 1, 1, BF16),
    ("resnet 28px b32", (32, 128, 28, 28), 128, 3, 1, 1, TF32_OFF),
    ("resnet 14px b32", (32, 256, 14, 14), 256, 3, 1, 1, torch.float32),
    ("resnet 7px b32", (32, 512, 7, 7), 512, 3, 1, 1, torch.float32),
    ("resnet 28px s2 b32", (32, 64, 56, 56), 128, 3, 2, 1, torch.float32),
    ("1x1 56px b32", (32, 256, 56, 56), 64, 1, 1, 0, torch.float32),
    ("resnet 56px b32 channels_last", (32, 64, 56, 56), 64, 3, 1, 1, torch.float32),
    ("resnet 14px b32 channels_last", (32, 256, 14, 14), 256, 3, 1, 1, torch.float32),
    ("1x1 56px b32 channels_last", (32, 256, 56, 56), 64, 1, 1, 0, torch.float32),
    ("16 channels 64px channels_last", (32, 16, 64, 64), 32, 3, 1, 1, torch.float32),
    ("stem 7x7 s2 b32", (32, 3, 224, 224), 64, 7, 2, 3, torch.float32),
    ("8 channels 64px b32", (32, 8, 64, 64), 32, 3, 1, 1, torch.float32),
    ("16 channels 64px b32", (32, 16, 64, 64), 32, 3, 1, 1, torch.float32),
    ("tiny 16px", (1, 16, 16, 16), 16, 3, 1, 1, torch.float32),
    # small layers, under one wave of tiles (the first two within the direct kernel's rule)
    ("small 1x32 16px", (1, 32, 16, 16), 32, 3, 1, 1, torch.float32),
    ("small 8x16 16px", (8, 16, 16, 16), 16, 3, 1, 1, torch.float32),
    ("small 1x64 16px", (1, 64, 16, 16), 64, 3, 1, 1, torch.float32),
    ("small 1x64 32px", (1, 64, 32, 32), 64, 3, 1, 1, torch.float32),
    ("small 1x128 28px", (1, 128, 28, 28), 128, 3, 1, 1, torch.float32),
    ("small 2x256 14px", (2, 256, 14, 14), 256, 3, 1, 1, torch.float32),
    ("small 4x64 32px", (4, 64, 32, 32), 64, 3, 1, 1, torch.float32),
    ("small 8x128 28px", (8, 128, 28, 28), 128, 3, 1, 1, torch.float32),
    # 16-bit where the K-table kernel or the patch kernel's K bound was in question, fp32
    # beside them (v64)
    ("1x1 56px b32", (32, 256, 56, 56), 64, 1, 1, 0, BF16),
    ("1x1 56px b32, 256 out", (32, 64, 56, 56), 256, 1, 1, 0, torch.float32),
    ("1x1 56px b32, 256 out", (32, 64, 56, 56), 256, 1, 1, 0, BF16),
    ("1x1 28px b32, 512 out", (32, 128, 28, 28), 512, 1, 1, 0, torch.float32),
    ("1x1 28px b32, 512 out", (32, 128, 28, 28), 512, 1, 1, 0, BF16),
    ("1x1 256 -> 256 56px b32", (32, 256, 56, 56), 256, 1, 1, 0, BF16),
    ("1x1 256 -> 256 56px b32", (32, 256, 56, 56), 256, 1, 1, 0, torch.float16),
    ("resnet 28px s2 b32", (32, 64, 56, 56), 128, 3, 2, 1, BF16),
    ("s2 128 -> 256 56px b32", (32, 128, 56, 56), 256, 3, 2, 1, BF16),
    ("s2 128 -> 256 56px b32", (32, 128, 56, 56), 256, 3, 2, 1, torch.float32),
    ("126px rows b128", (128, 64, 126, 126), 128, 3, 1, 1, BF16),
    ("126px rows b32", (32, 64, 126, 126), 128, 3, 1, 1, BF16),
    ("VGG 256 channels 56px b16", (16, 256, 56, 56), 256, 3, 1, 1, BF16),
    ("VGG 256 channels 56px b16", (16, 256, 56, 56), 256, 3, 1, 1, torch.float16),
    ("256 channels 112px b8", (8, 256, 112, 112), 256, 3, 1, 1, BF16),
    ("192 channels 56px b32", (32, 192, 56, 56), 192, 3, 1, 1, BF16),
    ("192 channels 56px b32", (32, 192, 56, 56), 192, 3, 1, 1, torch.float32),
    # fp32 strided layers, where the K-table kernel and cuDNN's path trade places (v64)
    ("s2 128 -> 128 64px b32", (32, 128, 64, 64), 128, 3, 2, 1, torch.float32),
    ("s2 128 -> 256 28px b32", (32, 128, 28, 28), 256, 3, 2, 1, torch.float32),
    ("s2 256 -> 512 14px b32", (32, 256, 14, 14), 512, 3, 2, 1, torch.float32),
    ("s2 64 -> 64 112px b32", (32, 64, 112, 112), 64, 3, 2, 1, torch.float32),
    ("s2 1x1 256 -> 512 56px b32", (32, 256, 56, 56), 512, 1, 2, 0, torch.float32),
    ("s2 32 -> 64 224px b16", (16, 32, 224, 224), 64, 3, 2, 1, torch.float32),
    ("s2 64 -> 128 56px b128", (128, 64, 56, 56), 128, 3, 2, 1, torch.float32),
    # 16-bit 1x1 strided layers (ResNet's downsampling shortcuts), where cuDNN's 16-bit
    # kernels lost to the K-table kernel on an unseen layer (v66); a 3x3 one beside them
    ("s2 1x1 64 -> 128 56px b32", (32, 64, 56, 56), 128, 1, 2, 0, BF16),
    ("s2 1x1 256 -> 512 56px b32", (32, 256, 56, 56), 512, 1, 2, 0, BF16),
    ("s2 1x1 256 -> 512 56px b32", (32, 256, 56, 56), 512, 1, 2, 0, torch.float16),
    ("s2 1x1 256 -> 512 56px b8", (8, 256, 56, 56), 512, 1, 2, 0, BF16),
    ("s2 1x1 512 -> 1024 28px b64", (64, 512, 28, 28), 1024, 1, 2, 0, BF16),
    ("s2 1x1 1024 -> 2048 14px b32", (32, 1024, 14, 14), 2048, 1, 2, 0, BF16),
    ("s2 1x1 1024 -> 2048 14px b32", (32, 1024, 14, 14), 2048, 1, 2, 0, torch.float32),
    ("s2 256 -> 512 28px b32", (32, 256, 28, 28), 512, 3, 2, 1, BF16),
    ("1x1 s2 512 -> 1024 28px b32", (32, 512, 28, 28), 1024, 1, 2, 0, BF16),
    # stride-1 layers at K >= 512 under 64 K-table tiles per SM (the compute-heavy clause):
    # input channels from 48 to 240, where cuDNN's kernel choice loses from 97 to 127 at
    # 28 px output and not at 14 px (v67, reverted)
    ("cin 100 -> 200 30px b64", (64, 100, 30, 30), 200, 3, 1, 0, torch.float32),
    ("cin 100 -> 200 30px b64", (64, 100, 30, 30), 200, 3, 1, 0, BF16),
    ("cin 96 -> 192 30px b64", (64, 96, 30, 30), 192, 3, 1, 0, torch.float32),
    ("cin 104 -> 208 30px b64", (64, 104, 30, 30), 208, 3, 1, 0, torch.float32),
    ("cin 100 -> 128 30px b64", (64, 100, 30, 30), 128, 3, 1, 0, torch.float32),
    ("cin 100 -> 200 32px b64", (64, 100, 32, 32), 200, 3, 1, 1, torch.float32),
    ("cin 128 -> 256 30px b64", (64, 128, 30, 30), 256, 3, 1, 0, torch.float32),
    ("cin 60 -> 120 56px b32", (32, 60, 56, 56), 120, 3, 1, 1, torch.float32),
    ("cin 64 -> 128 56px b32", (32, 64, 56, 56), 128, 3, 1, 1, torch.float32),
    ("cin 48 -> 96 30px b64", (64, 48, 30, 30), 96, 3, 1, 0, torch.float32),
    ("cin 72 -> 144 30px b64", (64, 72, 30, 30), 144, 3, 1, 0, torch.float32),
    ("cin 80 -> 160 30px b64", (64, 80, 30, 30), 160, 3, 1, 0, torch.float32),
    ("cin 80 -> 160 30px b64", (64, 80, 30, 30), 160, 3, 1, 0, BF16),
    ("cin 96 -> 192 30px b64", (64, 96, 30, 30), 192, 3, 1, 0, BF16),
    ("cin 104 -> 208 30px b64", (64, 104, 30, 30), 208, 3, 1, 0, BF16),
    ("cin 112 -> 224 30px b64", (64, 112, 30, 30), 224, 3, 1, 0, torch.float32),
    ("cin 112 -> 224 30px b64", (64, 112, 30, 30), 224, 3, 1, 0, BF16),
    ("cin 128 -> 256 30px b64", (64, 128, 30, 30), 256, 3, 1, 0, BF16),
    ("cin 144 -> 288 30px b64", (64, 144, 30, 30), 288, 3, 1, 0, torch.float32),
    ("cin 144 -> 288 30px b64", (64, 144, 30, 30), 288, 3, 1, 0, BF16),
    ("cin 200 -> 400 30px b64", (64, 200, 30, 30), 400, 3, 1, 0, torch.float32),
    ("cin 200 -> 400 30px b64", (64, 200, 30, 30), 400, 3, 1, 0, BF16),
    ("cin 240 -> 480 30px b64", (64, 240, 30, 30), 480, 3, 1, 0, torch.float32),
    ("cin 120 -> 240 30px b64", (64, 120, 30, 30), 240, 3, 1, 0, torch.float32),
    ("cin 112 -> 112 14px b128", (128, 112, 14, 14), 112, 3, 1, 1, torch.float32),
    ("cin 112 -> 112 14px b128", (128, 112, 14, 14), 112, 3, 1, 1, BF16),
    ("cin 112 -> 224 28px b64", (64, 112, 28, 28), 224, 3, 1, 1, BF16),
    ("cin 100 -> 100 22px b128", (128, 100, 22, 22), 100, 3, 1, 0, torch.float32),
    # output channels around cuDNN's 192-wide fp32 tile, the kernel it runs 100 -> 200 on
    ("cout 64 -> 200 30px b64", (64, 64, 30, 30), 200, 3, 1, 0, torch.float32),
    ("cout 64 -> 224 30px b64", (64, 64, 30, 30), 224, 3, 1, 0, torch.float32),
    ("cout 64 -> 176 30px b64", (64, 64, 30, 30), 176, 3, 1, 0, torch.float32),
    ("cout 96 -> 224 30px b64", (64, 96, 30, 30), 224, 3, 1, 0, torch.float32),
    ("cout 128 -> 200 30px b64", (64, 128, 30, 30), 200, 3, 1, 0, torch.float32),
    ("cout 100 -> 192 30px b64", (64, 100, 30, 30), 192, 3, 1, 0, torch.float32),
    ("cout 100 -> 256 30px b64", (64, 100, 30, 30), 256, 3, 1, 0, torch.float32),
    ("cout 256 -> 224 14px b128", (128, 256, 14, 14), 224, 3, 1, 1, torch.float32),
    ("cout 64 -> 200 30px b64", (64, 64, 30, 30), 200, 3, 1, 0, BF16),
    ("cout 100 -> 192 30px b64", (64, 100, 30, 30), 192, 3, 1, 0, BF16),
    # fp32 channels-last layers of more than 64 output channels at 2-4 patch tiles per SM
    # (the patch rule asks for 4, and K below 1024; an unseen miss at 3.9 and K = 1152)
    ("channels_last 128 -> 256 32px b64", (64, 128, 32, 32), 256, 3, 1, 1, torch.float32),
    ("channels_last 128 -> 256 32px b32", (32, 128, 32, 32), 256, 3, 1, 1, torch.float32),
    ("channels_last 128 -> 128 56px b32", (32, 128, 56, 56), 128, 3, 1, 1, torch.float32),
    ("channels_last 64 -> 128 56px b32", (32, 64, 56, 56), 128, 3, 1, 1, torch.float32),
    ("channels_last 64 -> 256 28px b64", (64, 64, 28, 28), 256, 3, 1, 1, torch.float32),
    # exact fp32 below 16 input channels, which the cuDNN rule leaves to the K-table kernel
    # (3xTF32), and exact fp32 layers the patch kernel does not take (strided, 1x1, short
    # rows): the drawn list's misses both ways (docs/performance.md, the fifth list)
    ("exact 3 -> 32 224px b8", (8, 3, 224, 224), 32, 3, 1, 1, TF32_OFF),
    ("exact 3 -> 64 7x7 s2 224px b32", (32, 3, 224, 224), 64, 7, 2, 3, TF32_OFF),
    ("exact 3 -> 16 32px b128", (128, 3, 32, 32), 16, 3, 1, 1, TF32_OFF),
    ("exact 3 -> 32 5x5 224px b1 channels_last", (1, 3, 224, 224), 32, 5, 1, 2, TF32_OFF),
    ("exact 3 -> 64 224px b16 channels_last", (16, 3, 224, 224), 64, 3, 1, 1, TF32_OFF),
    ("exact 8 -> 64 128px b16", (16, 8, 128, 128), 64, 3, 1, 1, TF32_OFF),
    ("exact 8 -> 32 64px b64 channels_last", (64, 8, 64, 64), 32, 3, 1, 1, TF32_OFF),
    ("exact s2 32 -> 64 112px b64", (64, 32, 112, 112), 64, 3, 2, 1, TF32_OFF),
    ("exact s2 64 -> 128 56px b32", (32, 64, 56, 56), 128, 3, 2, 1, TF32_OFF),
    ("exact s2 128 -> 256 28px b32", (32, 128, 28, 28), 256, 3, 2, 1, TF32_OFF),
    ("exact s2 7x7 64 -> 128 32px b128", (128, 64, 32, 32), 128, 7, 2, 3, TF32_OFF),
    ("exact 1x1 256 -> 512 28px b32", (32, 256, 28, 28), 512, 1, 1, 0, TF32_OFF),
    ("exact 1x1 64 -> 128 32px b128", (128, 64, 32, 32), 128, 1, 1, 0, TF32_OFF),
    ("exact 160 -> 80 30px b16", (16, 160, 30, 30), 80, 3, 1, 1, TF32_OFF),
    ("exact 384 -> 384 30px b64", (64, 384, 30, 30), 384, 3, 1, 0, TF32_OFF),
    ("exact 48 -> 48 7x7 14px b128", (128, 48, 14, 14), 48, 7, 1, 3, TF32_OFF),
    # fp32 NCHW past the patch rule's K = 2304 (5x5 and wide 3x3 layers), and NCHW layers
    # of 16 output channels, under the rule's 32
    ("K 3200 128 -> 64 5x5 80px b8", (8, 128, 80, 80), 64, 5, 1, 2, torch.float32),
    ("K 3200 128 -> 64 5x5 64px b1", (1, 128, 64, 64), 64, 5, 1, 2, torch.float32),
    ("K 3200 128 -> 128 5x5 64px b16", (16, 128, 64, 64), 128, 5, 1, 2, torch.float32),
    ("K 2880 320 -> 320 64px b16", (16, 320, 64, 64), 320, 3, 1, 1, torch.float32),
    ("K 3456 384 -> 384 32px b32", (32, 384, 32, 32), 384, 3, 1, 1, torch.float32),
    ("K 4608 512 -> 512 28px b32", (32, 512, 28, 28), 512, 3, 1, 1, torch.float32),
    ("K 3136 64 -> 64 7x7 64px b16", (16, 64, 64, 64), 64, 7, 1, 3, torch.float32),
    ("K 3200 128 -> 64 5x5 80px b8", (8, 128, 80, 80), 64, 5, 1, 2, BF16),
    ("16 out 32 -> 16 32px b128", (128, 32, 32, 32), 16, 3, 1, 0, torch.float16),
    ("16 out 64 -> 16 56px b32", (32, 64, 56, 56), 16, 3, 1, 1, BF16),
    ("16 out 32 -> 16 32px b128", (128, 32, 32, 32), 16, 3, 1, 0, torch.float32),
    # layers of few input and output channels (K = C_in x taps of 27-72), past the direct
    # kernel's size rule: the KernelBench problem's own size (3 -> 16 at 32 px, 128 images)
    # among them
    ("small K 3 -> 16 32px b128", (128, 3, 32, 32), 16, 3, 1, 0, torch.float32),
    ("small K 3 -> 16 32px b128", (128, 3, 32, 32), 16, 3, 1, 0, BF16),
    ("small K 3 -> 16 32px b128 channels_last", (128, 3, 32, 32), 16, 3, 1, 0, torch.float32),
    ("small K 3 -> 16 32px b32", (32, 3, 32, 32), 16, 3, 1, 0, torch.float32),
    ("small K 3 -> 16 64px b128", (128, 3, 64, 64), 16, 3, 1, 1, torch.float32),
    ("small K 3 -> 32 32px b128", (128, 3, 32, 32), 32, 3, 1, 1, torch.float32),
    ("small K 3 -> 64 32px b128", (128, 3, 32, 32), 64, 3, 1, 1, torch.float32),
    ("small K 8 -> 16 32px b128", (128, 8, 32, 32), 16, 3, 1, 1, torch.float32),
    ("small K 3 -> 32 s2 224px b32", (32, 3, 224, 224), 32, 3, 2, 1, torch.float32),
    ("small K 4 -> 32 32px b128", (128, 4, 32, 32), 32, 3, 1, 1, torch.float32),
    ("small K 3 -> 32 64px b64", (64, 3, 64, 64), 32, 3, 1, 1, BF16),
    # NCHW layers under the patch rule's half a tile per SM (one to four images)
    ("few tiles 256 -> 256 64px b1", (1, 256, 64, 64), 256, 3, 1, 1, torch.float32),
    ("few tiles 256 -> 256 32px b2", (2, 256, 32, 32), 256, 3, 1, 1, torch.float32),
    ("few tiles 384 -> 256 32px b4", (4, 384, 32, 32), 256, 3, 1, 1, torch.float32),
    ("few tiles 128 -> 128 56px b2", (2, 128, 56, 56), 128, 3, 1, 1, torch.float32),
    ("few tiles 128 -> 128 64px b1", (1, 128, 64, 64), 128, 3, 1, 1, torch.float32),
    ("few tiles 64 -> 64 56px b4", (4, 64, 56, 56), 64, 3, 1, 1, torch.float32),
    ("few tiles 64 -> 128 128px b1", (1, 64, 128, 128), 128, 3, 1, 1, torch.float32),
    ("few tiles 128 -> 128 64px b1", (1, 128, 64, 64), 128, 3, 1, 1, BF16),
    ("few tiles 64 -> 64 56px b4", (4, 64, 56, 56), 64, 3, 1, 1, BF16),
]

# Layers that none of the rules' measurements used (``--unseen``): real networks' layers and
# odd sizes, to check that the rules carry beyond their evidence
UNSEEN = [
    ("headline", (128, 64, 128, 128), 128, 3, 1, 0, torch.float16),
    ("VGG 256 channels 56px b16", (16, 256, 56, 56), 256, 3, 1, 1, torch.float32),
    ("96 out 64px b32", (32, 64, 64, 64), 96, 3, 1, 1, torch.float32),
    ("24 -> 48 112px b32", (32, 24, 112, 112), 48, 3, 1, 1, torch.float32),
    ("odd 100 x 75 b16", (16, 64, 100, 75), 128, 3, 1, 1, torch.float32),
    ("5x5 32px b32", (32, 64, 32, 32), 128, 5, 1, 2, torch.float32),
    ("7x7 64px b16", (16, 32, 64, 64), 64, 7, 1, 3, torch.float32),
    ("1x1 512 -> 128 28px b64", (64, 512, 28, 28), 128, 1, 1, 0, torch.float32),
    ("batch 1 512px", (1, 64, 512, 512), 64, 3, 1, 1, torch.float32),
    ("3 channels 512px b8", (8, 3, 512, 512), 32, 3, 1, 1, torch.float32),
    ("UNet 64 channels 256px b8", (8, 64, 256, 256), 64, 3, 1, 1, BF16),
    ("20 channels 64px b32", (32, 20, 64, 64), 64, 3, 1, 1, torch.float32),
    ("resnet 56px b32", (32, 64, 56, 56), 64, 3, 1, 1, TF32_OFF),
    ("1024 channels 14px b8", (8, 1024, 14, 14), 1024, 3, 1, 1, torch.float32),
    ("resnet 28px b64 channels_last", (64, 128, 28, 28), 128, 3, 1, 1, BF16),
    ("headline channels_last", (128, 64, 128, 128), 128, 3, 1, 0, torch.float16),
    ("256 channels 28px b64", (64, 256, 28, 28), 256, 3, 1, 1, torch.float16),
    ("40 -> 80 48px b64", (64, 40, 48, 48), 80, 3, 1, 1, torch.float32),
    ("5x5 48 -> 96 48px b32", (32, 48, 48, 48), 96, 5, 1, 2, BF16),
    ("s2 192 -> 384 48px b32", (32, 192, 48, 48), 384, 3, 2, 1, torch.float32),
    ("256 channels 64px b16", (16, 256, 64, 64), 256, 3, 1, 1, torch.float32),
    ("128 -> 256 64px b32", (32, 128, 64, 64), 256, 3, 1, 1, BF16),
    ("1x1 64 -> 256 128px b16", (16, 64, 128, 128), 256, 1, 1, 0, torch.float32),
    ("3 channels 256px b16", (16, 3, 256, 256), 64, 3, 1, 1, torch.float32),
    ("odd 48 -> 72 80px b32", (32, 48, 80, 80), 72, 3, 1, 1, torch.float32),
    ("64 channels 128px b32", (32, 64, 128, 128), 64, 3, 1, 1, torch.float16),
    ("s2 64 -> 128 128px b16", (16, 64, 128, 128), 128, 3, 2, 1, BF16),
    ("5x5 32 -> 64 128px b16", (16, 32, 128, 128), 64, 5, 1, 2, BF16),
    ("1x1 1024 -> 256 14px b64", (64, 1024, 14, 14), 256, 1, 1, 0, BF16),
    ("128 channels 32px b32", (32, 128, 32, 32), 128, 3, 1, 1, TF32_OFF),
]


def random_layers(count: int, seed: int) -> list:
    """``count`` dense layers drawn as networks build them (channel counts, kernel sizes,
    strides, image sizes, batches and dtypes that models use, channels-last a quarter of
    the time), each between 2^24 and 2^37 multiply-adds: rows in SHAPES' form, for a panel
    that no rule was written from."""
    rng = random.Random(seed)
    channels = (3, 16, 24, 32, 48, 64, 64, 96, 128, 128, 160, 192, 256, 256, 384, 512, 1024)
    layers = []
    while len(layers) < count:
        cin = rng.choice(channels)
        if cin == 3:
            cout = rng.choice((16, 32, 64))
        else:
            cout = max(8, int(cin * rng.choice((1, 1, 2, 0.5))))
        k = rng.choice((1, 3, 3, 3, 3, 5, 7))
        stride = rng.choice((1, 1, 1, 2))
        padding = rng.choice((k // 2, k // 2, 0))
        size = rng.choice((7, 14, 28, 30, 32, 48, 56, 64, 80, 112, 128, 224))
        batch = rng.choice((1, 8, 16, 32, 64, 128))
        kind = rng.choice((torch.float32, torch.float32, BF16, torch.float16, TF32_OFF))
        out = (size + 2 * padding - k) // stride + 1
        macs = batch * cout * out * out * cin * k * k
        if out < 1 or not 2**24 <= macs <= 2**37 or batch * cin * size * size > 2**28:
            continue
        layout = " channels_last" if rng.random() < 0.25 else ""
        name = (f"r{len(layers)} {cin} -> {cout} {k}x{k} s{stride} p{padding} {size}px "
                f"b{batch}{layout}")
        layers.append((name, (batch, cin, size, size), cout, k, stride, padding, kind))
    return layers


def summary(rows: list, at: int) -> str:
    """How often the pick is the fastest path on the GPU (within 5 %) and ahead of eager;
    the pick / fastest ratio is column ``at`` of a row, eager / pick the next."""
    ratios = [(row[at], row[at + 1]) for row in rows if not math.isnan(row[at])]
    if not ratios:
        return "no layer timed"
    near = sum(r <= 1.05 for r, _ in ratios)
    behind = sum(e < 1 for _, e in ratios)
    geomean = math.exp(sum(math.log(r) for r, _ in ratios) / len(ratios))
    return (f"{len(ratios)} layers: the pick within 5 % of the fastest path on {near}, "
            f"pick / fastest geomean {geomean:.3f}, worst {max(r for r, _ in ratios):.2f}; "
            f"slower than eager on the GPU on {behind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="the shapes whose name contains one of these (comma-separated)"
    )
    parser.add_argument("--unseen", action="store_true", help="the layers no rule was measured on")
    parser.add_argument("--random", type=int, default=0, help="this many layers drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (--random)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="cuDNN's benchmark mode: the op's pick timed")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"cudnn.benchmark={args.cudnn_benchmark}")
    rows = []
    rules = (_cuda._cudnn_pays, _cuda._patch_pays, _cuda._direct_pays, _autotune.enabled)
    timed = {}  # the planner's timings of the last layer (benchmark mode)
    time_paths = _autotune.times
    _autotune.times = lambda *args: timed.update(time_paths(*args)) or dict(timed)
    layers = (random_layers(args.random, args.seed) if args.random
              else UNSEEN if args.unseen else SHAPES)
    for name, x_shape, cout, k, stride, padding, kind in layers:
        if not any(part in name for part in args.only.split(",")):
            continue
        dtype = torch.float32 if kind == TF32_OFF else kind
        torch.backends.cudnn.allow_tf32 = kind != TF32_OFF
        x, w, b, other = conv_inputs(x_shape, cout, k, dtype, channels_last="channels_last" in name)

        def op():
            return fx_fuse.conv2d_relu_add(x, w, b, other, stride, padding)

        def eager():
            return torch.relu(F.conv2d(x, w, b, stride, padding)) + other

        dilation = [1, 1]
        patch_runs = _cuda._patch_runs(x, w, [stride] * 2, [padding] * 2, dilation)
        direct_runs = _cuda._direct_runs(x, w, [stride] * 2, [padding] * 2, dilation)
        times = {}
        with torch.no_grad():
            for path in PATHS:
                if (path == "patch" and not patch_runs) or (path == "direct" and not direct_runs):
                    times[path] = (float("nan"), float("nan"))
                    continue
                _cuda._cudnn_pays = lambda *args, on=path == "cudnn": on
                _cuda._patch_pays = lambda *args, on=path == "patch": on
                _cuda._direct_pays = lambda *args, on=path == "direct": on
                _autotune.enabled = lambda device: False  # the forced path, untimed
                _cuda.forget_plans()  # plan again under the replaced rules
                try:
                    times[path] = (bench_ms(op)["ms"], gpu_us(op)[0] / 1e3)
                finally:
                    (_cuda._cudnn_pays, _cuda._patch_pays, _cuda._direct_pays,
                     _autotune.enabled) = rules
                    _cuda.forget_plans()
            times["eager"] = (bench_ms(eager)["ms"], gpu_us(eager)[0] / 1e3)
            torch.cuda.synchronize()
            timed.clear()
            start = time.perf_counter()
            rule = _cuda.plan(x, w, b, other, [stride] * 2, [padding] * 2, dilation, 1)[0]
            torch.cuda.synchronize()
            plan_ms = (time.perf_counter() - start) * 1e3
        ran = [p for p in PATHS if not math.isnan(times[p][1])]
        best = min(ran, key=lambda p: times[p][1])
        label = "tf32 off" if kind == TF32_OFF else str(dtype).replace("torch.", "")
        # the pick's GPU time over the fastest path's, and eager's over the pick's
        pick_ms = times[rule][1] if rule in times else float("nan")
        ratios = [pick_ms / times[best][1], times["eager"][1] / pick_ms]
        row = [name, label, *(t for p in (*PATHS, "eager") for t in times[p]), best, rule, *ratios]
        timings = " ".join(f"{path} {ms:.3f}" for path, ms in timed.items())
        rows.append(row + [plan_ms, timings] if args.cudnn_benchmark else row)
        print(rows[-1], flush=True)
    units = [f"{p} {unit}" for p in (*PATHS, "eager") for unit in ("ms", "GPU ms")]
    pick = "op picks (timed)" if args.cudnn_benchmark else "rule picks"
    headers = ["shape", "dtype", *units, "faster on GPU", pick, "pick / fastest", "eager / pick"]
    if args.cudnn_benchmark:
        headers += ["planning ms", "the planner's ms"]
    print(table(rows, headers))
    print(summary(rows, headers.index("pick / fastest")))


if __name__ == "__main__":
    main()
