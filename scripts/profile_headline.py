"""Run the fused op on the headline shape a few times (for ncu / nsys)."""

import sys

import torch

import fx_fuse

dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[sys.argv[1] if len(sys.argv) > 1 else "fp32"]
cl = "cl" in sys.argv
x = torch.rand(128, 64, 128, 128, device="cuda", dtype=dtype)
if cl:
    x = x.contiguous(memory_format=torch.channels_last)
conv = torch.nn.Conv2d(64, 128, 3).cuda().to(dtype)
bias = torch.randn(128, 1, 1, device="cuda", dtype=dtype)
with torch.no_grad():
    for _ in range(3):
        out = fx_fuse.conv2d_relu_add(x, conv.weight, conv.bias, bias)
torch.cuda.synchronize()
print("done", out.shape)
