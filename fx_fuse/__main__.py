"""Command line: ``python -m fx_fuse explain FILE.py`` and ``python -m fx_fuse build``.

``explain`` takes a file in the KernelBench convention: it defines ``Model``,
``get_inputs()`` and ``get_init_inputs()``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import List, Optional

import torch


def _load_problem(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"fx_fuse explain: cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [n for n in ("Model", "get_inputs", "get_init_inputs") if not hasattr(module, n)]
    if missing:
        raise SystemExit(
            f"fx_fuse explain: {path} must define Model, get_inputs() and "
            f"get_init_inputs(); missing {', '.join(missing)}"
        )
    return module


def _explain(args) -> None:
    from .explain import explain

    problem = _load_problem(Path(args.file))
    device = torch.device(args.device)
    model = problem.Model(*problem.get_init_inputs()).to(device)
    inputs = [x.to(device) if isinstance(x, torch.Tensor) else x for x in problem.get_inputs()]
    report = explain(model, *inputs)
    print(report)
    if args.code:
        print(report.code)


def _build(args) -> None:
    from . import _build

    _build.build(args.arch)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fx_fuse", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    explain = commands.add_parser("explain", help="report what fx_fuse fuses in a model file")
    explain.add_argument("file", help="a .py file defining Model, get_inputs, get_init_inputs")
    explain.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device to run the model on (default: cuda when available, else cpu)",
    )
    explain.add_argument("--code", action="store_true", help="also print the rewritten code")
    explain.set_defaults(run=_explain)

    build = commands.add_parser("build", help="build the CUDA kernel now (no GPU needed)")
    build.add_argument(
        "--arch",
        default=None,
        help="CUDA architectures, as TORCH_CUDA_ARCH_LIST (e.g. '8.0;9.0a'); "
        "default: TORCH_CUDA_ARCH_LIST, else the visible GPU",
    )
    build.set_defaults(run=_build)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
