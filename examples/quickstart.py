"""fx_fuse in one page: the KernelBench level-2 problem-1 model, explained, compiled with
``backend="fx_fuse"``, checked against eager and, where CUDA is present, timed.

    python examples/quickstart.py
"""

import sys
from pathlib import Path

import torch
from tabulate import tabulate

import fx_fuse

sys.path.insert(0, str(Path(__file__).parent))
from kernelbench_level2_problem1 import Model, get_init_inputs, get_inputs  # noqa: E402


def make_problem(device):
    torch.manual_seed(0)
    model = Model(*get_init_inputs()).to(device)
    if device == "cuda":
        (x,) = get_inputs()
    else:  # the headline shape is 300 GFLOP: a smaller batch and image on the CPU
        x = torch.rand(2, 64, 32, 32)
    return model, x.to(device)


def time_ms(fn, x) -> float:
    from triton.testing import do_bench

    with torch.no_grad():
        return do_bench(lambda: fn(x), return_mode="median")


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, x = make_problem(device)
    print(fx_fuse.explain(model, x), end="\n\n")

    fused = torch.compile(model, backend="fx_fuse")
    with torch.no_grad():
        expected = model(x)
        got = fused(x)
    # fp32 convs use TF32 on the GPU (PyTorch's default), so allow KernelBench's 1e-4.
    close = torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    diff = (got - expected).abs().max().item()
    print(f"fx_fuse {'matches eager' if close else 'DIFFERS FROM EAGER'} "
          f"(max abs difference {diff:.2e}, output {tuple(got.shape)} on {device})")
    if not close:
        raise SystemExit(1)

    if device == "cuda":
        inductor = torch.compile(model)
        rows = [(name, time_ms(fn, x)) for name, fn in
                [("eager", model), ("inductor", inductor), ("fx_fuse", fused)]]
        base = rows[0][1]
        print(tabulate([(n, f"{t:.3f}", f"{base / t:.2f}x") for n, t in rows],
                       headers=["", "median ms", "vs eager"]))


if __name__ == "__main__":
    main()
