"""torchvision architectures under ``torch.compile(backend="fx_fuse")`` on the GPU: fused and
refused sites, and the largest difference from eager.

    python scripts/torchvision_check.py [--models resnet18,vgg11] [--inner inductor]
                                        [--batch 2] [--size 224] [--no-tf32]

Random weights (``weights=None``), eval mode, CUDA. One failing model prints its error in
its row and the run goes on; the exit status is 1 when any row is not ok.

Tolerance: fp32 convs use TF32 by default in eager (cuDNN) and in the fused kernel, with
different reduction orders, and deep nets amplify the difference; ``--no-tf32`` compares
in exact fp32, where the default tolerance is much tighter.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch
from tabulate import tabulate
from torch._dynamo.utils import counters

MODELS = [
    "resnet18", "resnet50", "vgg11", "squeezenet1_0", "mobilenet_v2", "densenet121",
    "efficientnet_b0", "googlenet",
]


def build(name: str) -> torch.nn.Module:
    import torchvision

    kwargs = {"weights": None}
    if name == "googlenet":  # no auxiliary heads in eval; skip the pretrained-only init
        kwargs.update(aux_logits=False, init_weights=True)
    return getattr(torchvision.models, name)(**kwargs)


def check(name: str, args) -> dict:
    row = {"model": name, "fused": "-", "refused": "-", "max error": "-", "ok": False,
           "note": ""}
    torch._dynamo.reset()
    counters.clear()
    try:
        torch.manual_seed(0)
        model = build(name).eval().to(args.device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        with torch.no_grad():
            want = model(x)
            compiled = torch.compile(model, backend="fx_fuse", options={"inner": args.inner})
            start = time.perf_counter()
            got = compiled(x)
            if args.device == "cuda":
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - start
        got = got.logits if hasattr(got, "logits") else got
        want = want.logits if hasattr(want, "logits") else want
        error = (got.float() - want.float()).abs().max().item()
        scale = want.float().abs().max().item()
        row.update(
            fused=counters["fx_fuse"]["fused"],
            refused=counters["fx_fuse"]["refused"],
            graphs=counters["stats"]["unique_graphs"],
        )
        row["max error"] = f"{error:.2e}"
        row["ok"] = bool(torch.isfinite(got).all()) and error <= args.atol + args.rtol * scale
        row["note"] = f"compile+run {compile_s:.0f}s, max |eager| {scale:.2e}"
    except Exception as e:  # one model failing must not stop the table
        row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if args.verbose:
            traceback.print_exc()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--inner", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-tf32", action="store_true", help="exact fp32 convs and matmuls")
    parser.add_argument("--atol", type=float, default=None)
    parser.add_argument("--rtol", type=float, default=None)
    parser.add_argument("--verbose", action="store_true", help="print tracebacks")
    parser.add_argument("--device", default="cuda", help="cuda (the point); cpu to debug")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("torchvision_check: needs a CUDA device", file=sys.stderr)
        return 2
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    default_tol = 1e-4 if args.no_tf32 else 1e-2
    args.atol = default_tol if args.atol is None else args.atol
    args.rtol = default_tol if args.rtol is None else args.rtol

    rows = []
    for name in args.models.split(","):
        row = check(name.strip(), args)
        rows.append(row)
        print(f"{row['model']}: fused {row['fused']}, refused {row['refused']}, "
              f"max error {row['max error']}, ok {row['ok']} {row['note']}", flush=True)
    print()
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"torch {torch.__version__}, {device}, inner={args.inner}, "
          f"batch {args.batch}, {args.size}x{args.size}, "
          f"tf32 {'off' if args.no_tf32 else 'on'}, tolerance atol={args.atol} rtol={args.rtol}")
    headers = ["model", "fused", "refused", "graphs", "max error", "ok", "note"]
    print(tabulate([[row.get(h, "-") for h in headers] for row in rows], headers=headers))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
