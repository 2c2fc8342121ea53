"""Random convolutions on every path that takes them, against a float64 reference.

Each case draws a convolution (sizes, kernel, stride, padding, dilation, groups), a dtype
and TF32 setting, the layouts of the input and weight (NCHW, channels-last, or a strided
view), a bias or none, and a kind of `other` (per channel, full, broadcast over rows or
columns, a 0-dim tensor on the GPU or the CPU). It runs the op as the planner decides,
then every path the planner may time for the arguments (the direct kernel past its size
rule too), each forced through the C++ runner (``run_plan``), and the K-table path again
on the portable mma.sync kernel. Each output is compared with the float64 convolution of
the same inputs: NaN where the reference has none, or an error past the dtype's
tolerance, fails the case. Prints a table of cases and failures per path and dtype, then
every failure with the case's index (rerun one with ``--case``).

    python scripts/fuzz_paths.py                     # 300 cases, seed 0
    python scripts/fuzz_paths.py --cases 1000 --seed 3
    python scripts/fuzz_paths.py --seed 3 --case 417 # one case again, its arguments printed
    python scripts/fuzz_paths.py --cudnn-benchmark   # the planned run's path timed
        # (fx_fuse._autotune), cuDNN's kernels chosen by its own timing
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from _timing import table  # noqa: E402

# dtype name -> (dtype, allow_tf32, (norm-relative tolerance, atol / max |ref|, rtol))
POLICIES = {
    "tf32": (torch.float32, True, (3e-3, 5e-3, 1e-2)),
    "fp32": (torch.float32, False, (5e-5, 5e-5, 1e-4)),
    "fp16": (torch.float16, True, (2e-3, 4e-3, 1e-2)),
    "bf16": (torch.bfloat16, True, (1e-2, 3e-2, 5e-2)),
}
OTHER_KINDS = ("c11", "1c11", "full", "full_cl", "full_strided", "111w", "1h1", "n111",
               "scalar_gpu", "scalar_cpu")
# the input's largest element count (keeps a case's float64 reference quick)
MAX_INPUT = 1 << 23


@dataclass
class Case:
    """One drawn convolution: everything needed to make its tensors again."""

    index: int
    policy: str
    n: Optional[int]  # None: an unbatched (C, H, W) input
    c: int
    h: int
    w: int
    cout: int
    kernel: Tuple[int, int]
    stride: List[int]
    padding: List[int]
    dilation: List[int]
    groups: int
    layout: str  # "nchw", "cl", "strided" (a view with gaps), "weight_cl" (only the weight)
    bias: bool
    other: str
    seed: int = field(repr=False, default=0)

    def out_hw(self) -> Tuple[int, int]:
        sizes = []
        for i, size in enumerate((self.h, self.w)):
            span = self.dilation[i] * (self.kernel[i] - 1) + 1
            sizes.append((size + 2 * self.padding[i] - span) // self.stride[i] + 1)
        return sizes[0], sizes[1]


def _choice(rng: random.Random, weighted: Dict) -> object:
    keys = list(weighted)
    return rng.choices(keys, weights=[weighted[k] for k in keys])[0]


def draw(rng: random.Random, index: int) -> Case:
    """A random valid case: its padded input at least as large as the dilated kernel, and
    its input at most MAX_INPUT elements. A fifth of the cases are large enough that the
    patch kernel's CTAs walk several tiles."""
    while True:
        policy = _choice(rng, {"tf32": 4, "fp32": 2, "bf16": 3, "fp16": 2})
        large = rng.random() < 0.2
        groups = 1
        if large:
            n = rng.choice([4, 8, 16, 32])
            c = rng.choice([16, 32, 48, 64, 96, 128])
            h, w = rng.randint(24, 130), rng.randint(24, 130)
            cout = rng.choice([32, 48, 64, 72, 96, 120, 128, 136, 192, 256])
        else:
            n = rng.choice([None, 1, 1, 2, 3, 4, 8])
            c = rng.choice([1, 2, 3, 4, 8, 12, 16, 24, 32, 40, 48, 64, 72, 128, 160])
            h, w = rng.randint(1, 48), rng.randint(1, 48)
            cout = rng.choice([1, 3, 8, 16, 17, 32, 48, 64, 70, 96, 128, 130, 200])
            if rng.random() < 0.2:  # grouped: depthwise, or a few groups
                groups = c if rng.random() < 0.6 else next(
                    g for g in (8, 4, 2, 1) if c % g == 0 and g <= c
                )
                cout = groups * rng.choice([1, 1, 2, 3])
        square = rng.random() < 0.7
        kh = rng.choice([1, 2, 3, 3, 3, 5, 7])
        kernel = (kh, kh if square else rng.choice([1, 2, 3, 5]))
        stride = [_choice(rng, {1: 6, 2: 3, 3: 1})] * 2
        if rng.random() < 0.15:
            stride = [rng.randint(1, 3), rng.randint(1, 3)]
        padding = [rng.randint(0, 3)] * 2 if rng.random() < 0.8 else [rng.randint(0, 3) for _ in "hw"]
        dilation = [_choice(rng, {1: 8, 2: 2, 3: 1})] * 2
        if large and rng.random() < 0.7:  # the dense stride-1 layers the patch kernel takes
            stride, dilation = [1, 1], [1, 1]
        case = Case(
            index=index, policy=policy, n=n, c=c, h=h, w=w, cout=cout, kernel=kernel,
            stride=stride, padding=padding, dilation=dilation, groups=groups,
            layout=_choice(rng, {"nchw": 5, "cl": 3, "strided": 1, "weight_cl": 1}),
            bias=rng.random() < 0.85,
            other=rng.choice(OTHER_KINDS),
            seed=rng.getrandbits(32),
        )
        if case.n is None and case.layout == "cl":
            case.layout = "nchw"  # a 3-D tensor has no channels-last format
        oh, ow = case.out_hw()
        if oh >= 1 and ow >= 1 and (n or 1) * c * h * w <= MAX_INPUT:
            return case


def tensors(case: Case, device: str = "cuda"):
    """The case's op arguments: (x, weight, bias, other, stride, padding, dilation, groups)."""
    dtype = POLICIES[case.policy][0]
    gen = torch.Generator(device="cpu").manual_seed(case.seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    n = case.n or 1
    cpg = case.c // case.groups
    if case.layout == "strided":  # every other column of a wider input
        x = randn(n, case.c, case.h, 2 * case.w)[..., ::2]
    else:
        x = randn(n, case.c, case.h, case.w)
    weight = randn(case.cout, cpg, *case.kernel) / math.sqrt(cpg * math.prod(case.kernel))
    if case.layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    if case.layout in ("cl", "weight_cl"):
        weight = weight.contiguous(memory_format=torch.channels_last)
    if case.n is None:
        x = x[0]
    bias = randn(case.cout) if case.bias else None
    oh, ow = case.out_hw()
    other = {
        "c11": lambda: randn(case.cout, 1, 1),
        "1c11": lambda: randn(1, case.cout, 1, 1),
        "full": lambda: randn(n, case.cout, oh, ow),
        "full_cl": lambda: randn(n, case.cout, oh, ow).contiguous(memory_format=torch.channels_last),
        "full_strided": lambda: randn(n, case.cout, ow, oh).transpose(2, 3),
        "111w": lambda: randn(1, 1, 1, ow),
        "1h1": lambda: randn(oh, 1),
        "n111": lambda: randn(n, 1, 1, 1),
        "scalar_gpu": lambda: randn(()),
        "scalar_cpu": lambda: randn(()).cpu(),
    }[case.other]()
    if case.n is None and other.dim() == 4:
        other = other[0]
    return x, weight, bias, other, case.stride, case.padding, case.dilation, case.groups


def reference64(x, weight, bias, other, stride, padding, dilation, groups):
    """relu(conv2d(x) + bias) + other in float64, and the rounding scale of each output
    (the root of the sum of its squared products: where the sum cancels, the error of its
    products is what a tolerance is relative to)."""
    o = other.double().to(x.device) if other.dim() else other.item()
    b = None if bias is None else bias.double()
    ref = torch.relu(F.conv2d(x.double(), weight.double(), b, stride, padding, dilation, groups)) + o
    scale = F.conv2d(x.double() ** 2, weight.double() ** 2, None, stride, padding, dilation, groups)
    return ref, scale.sqrt()


def mismatch(out, ref, scale, policy: str) -> Optional[str]:
    """Why ``out`` fails against the float64 ``ref``, or None."""
    rel_tol, atol_scale, rtol = POLICIES[policy][2]
    if out.shape != ref.shape:
        return f"shape {list(out.shape)}, expected {list(ref.shape)}"
    out = out.double()
    if (torch.isnan(out) & ~torch.isnan(ref)).any():
        return "NaN where the reference has none"
    norm = max(ref.norm().item(), scale.norm().item(), 1e-30)
    largest = max(ref.abs().max().item() if ref.numel() else 0.0, scale.max().item() if scale.numel() else 0.0)
    rel = (out - ref).norm().item() / norm
    if rel >= rel_tol:
        return f"relative error {rel:.2e} >= {rel_tol:.0e}"
    excess = (out - ref).abs() - (atol_scale * (largest or 1.0) + rtol * ref.abs())
    if ref.numel() and excess.max().item() > 0:
        return f"an element off by {excess.max().item():.2e} past the tolerance"
    return None


def runs(args) -> Dict[str, Callable[[], torch.Tensor]]:
    """The runs of one case, each a function returning the output: the op as planned, then
    every path the planner may time for it (``_cuda._candidates``: not the tensor-core
    kernels for exact fp32 past ``_cuda._F32X3_MAX_K`` where the cuDNN path runs), forced
    with the plan's layouts, with the direct kernel wherever the binding takes it up to
    2^27 multiply-adds (past its size rule, and on grouped convolutions), and the K-table
    path on the mma.sync kernel."""
    from fx_fuse import _cuda, ops

    x, weight, bias, other, stride, padding, dilation, groups = args
    calls = {"planned": lambda: torch.ops.fx_fuse.conv2d_relu_add.default(*args)}
    planned = _cuda.plan(*args)
    if not isinstance(planned, tuple):  # the reference path: no kernel to force
        return calls
    _, x_cl, out_cl, hopper = planned
    xb = x.unsqueeze(0) if x.dim() == 3 else x
    dense = xb.contiguous(memory_format=torch.channels_last if x_cl else torch.contiguous_format)
    geometry = (dense, weight, stride, padding, dilation)
    out_shape = ops.output_shape(*geometry)
    macs = math.prod(out_shape) * math.prod(weight.shape[1:])
    direct = macs <= 1 << 27 and _cuda._direct_runs(*geometry)
    patch_runs = groups == 1 and hopper and _cuda._patch_runs(*geometry)
    paths = _cuda._candidates(dense, weight, out_shape, stride, padding, dilation, groups,
                              direct, patch_runs)
    if direct and "direct" not in paths:  # grouped: the binding takes it, the planner does not
        paths.append("direct")
    run_plan = _cuda._extension().run_plan
    for path in paths:
        calls[path] = lambda path=path: run_plan((path, x_cl, out_cl, hopper), *args)
    if "fused" in paths:
        calls["mma.sync"] = lambda: run_plan(("fused", x_cl, out_cl, False), *args)
    return calls


def run_case(case: Case) -> List[Tuple[str, Optional[str]]]:
    """(run, why it failed or None) for each run of the case."""
    from fx_fuse import _cuda

    torch.backends.cudnn.allow_tf32 = POLICIES[case.policy][1]
    _cuda.forget_plans()
    args = tensors(case)
    ref, scale = reference64(*args)
    results = []
    for name, fn in runs(args).items():
        try:
            out = fn()
            torch.cuda.synchronize()
            why = mismatch(out, ref, scale, case.policy)
        except Exception as e:  # an error is a failure to report, not the end of the run
            why = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        results.append((name, why))
    return results


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=None, help="run only this case's index")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="cuDNN's benchmark mode: the op times its paths")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    import warnings

    import fx_fuse  # noqa: F401  (registers the op)

    warnings.simplefilter("ignore")  # the reference path's announcements, once per reason
    rng = random.Random(args.seed)
    cases = [draw(rng, i) for i in range(args.cases)]
    if args.case is not None:
        cases = [cases[args.case]]
        print(cases[0])
    counts: Counter = Counter()
    failures = []
    for case in cases:
        for name, why in run_case(case):
            counts[(name, case.policy, "cases")] += 1
            if why is not None:
                counts[(name, case.policy, "failed")] += 1
                failures.append((case, name, why))
    keys = sorted({(name, policy) for name, policy, _ in counts})
    rows = [[name, policy, counts[(name, policy, "cases")], counts[(name, policy, "failed")]]
            for name, policy in keys]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, seed {args.seed}, "
          f"{len(cases)} cases, cudnn.benchmark={args.cudnn_benchmark}")
    print(table(rows, ["run", "dtype", "cases", "failed"]))
    for case, name, why in failures:
        print(f"FAIL case {case.index} on {name}: {why}\n  {case}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
