"""Time the op on a few layers for two or more builds of the package, to measure a kernel
change against the kernels before it on one machine. A tree is a copy of the package's
sources (``git archive REV fx_fuse kernels pyproject.toml | tar -x -C DIR``, or the
checkout itself); each is imported in processes of its own, with a build cache of its
own, and the trees take turns in every round, so that the drift of the machine between
processes falls on all of them alike. Prints each layer's median ms per tree (every
round's reading) and each tree's change against the first.

    python benchmarks/bench_ab.py --tree v62=/tmp/v62 --tree new=. --build
    python benchmarks/bench_ab.py --tree v62=/tmp/v62 --tree new=. --dtype fp16 \\
        --layers headline,pad1 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent

# 3x3 stride-1 layers: x's shape, output channels, padding
LAYERS: Dict[str, Tuple[Tuple[int, int, int, int], int, int]] = {
    "headline": ((128, 64, 128, 128), 128, 0),
    "pad1": ((128, 64, 128, 128), 128, 1),
    "cin32": ((128, 32, 128, 128), 128, 0),
    "batch32": ((32, 64, 128, 128), 128, 0),
    "56px": ((128, 64, 56, 56), 128, 1),
    "56px_64": ((32, 64, 56, 56), 64, 1),
    "64px": ((64, 128, 64, 64), 128, 1),
    "32px": ((64, 128, 32, 32), 128, 1),
    "28px": ((256, 128, 28, 28), 128, 1),
}
DTYPES = ("fp32", "fp32_cl", "bf16", "fp16")


def time_layers(layers: Sequence[str], dtype: str) -> Dict[str, float]:
    """The op's do_bench median (ms) on each layer, with the fx_fuse this process imports."""
    import torch

    sys.path.insert(0, str(HERE))
    from _timing import bench_ms, conv_inputs

    import fx_fuse

    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    out = {}
    for name in layers:
        xs, cout, pad = LAYERS[name]
        gen = torch.Generator(device="cuda").manual_seed(0)
        x, w, b, other = conv_inputs(xs, cout, 3, dt, channels_last=dtype == "fp32_cl", generator=gen)
        with torch.no_grad():
            r = bench_ms(lambda: fx_fuse.conv2d_relu_add(x, w, b, other, 1, pad), warmup_ms=100, rep_ms=500)
        out[name] = r["ms"]
    return out


def _env(tree: Path, cache: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["FX_FUSE_CACHE_DIR"] = str(cache)
    return env


def build_trees(trees: Dict[str, Path], cache_root: Path) -> None:
    """Each tree's extension, built side by side, the CPUs shared between them."""
    jobs = str(max(1, (os.cpu_count() or 1) // len(trees)))

    def build(name: str) -> None:
        env = _env(trees[name], cache_root / name)
        env["MAX_JOBS"] = jobs
        subprocess.run([sys.executable, "-c", "import fx_fuse._build as b; b.load()"], env=env, check=True)

    with ThreadPoolExecutor(len(trees)) as pool:
        list(pool.map(build, trees))


def run_tree(tree: Path, cache: Path, layers: Sequence[str], dtype: str) -> Dict[str, float]:
    """time_layers in a process that imports the tree's fx_fuse."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inner", "--dtype", dtype,
           "--layers", ",".join(layers)]
    done = subprocess.run(cmd, env=_env(tree, cache), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_ab: timing {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(readings: Dict[str, List[Dict[str, float]]], layers: Sequence[str]) -> List[List[str]]:
    """Rows per layer: each tree's median ms (and its readings), then its change against the
    first tree's median."""
    names = list(readings)
    rows = []
    for layer in layers:
        row = [layer]
        first = statistics.median(r[layer] for r in readings[names[0]])
        for name in names:
            values = [r[layer] for r in readings[name]]
            median = statistics.median(values)
            cell = f"{median:.4f}"
            if len(values) > 1:
                cell += " (" + " / ".join(f"{v:.4f}" for v in values) + ")"
            if name != names[0]:
                cell += f" {100 * (median / first - 1):+.1f} %"
            row.append(cell)
        rows.append(row)
    return rows


def _parse_trees(specs: Sequence[str]) -> Dict[str, Path]:
    trees = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"bench_ab: --tree expects NAME=PATH, got {spec!r}")
        if not (Path(path) / "fx_fuse" / "__init__.py").is_file():
            raise SystemExit(f"bench_ab: --tree {name}: {path} holds no fx_fuse package")
        trees[name] = Path(path).resolve()
    if len(trees) < 2:
        raise SystemExit("bench_ab: give at least two --tree NAME=PATH (the first is the baseline)")
    return trees


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH; the first is the baseline")
    parser.add_argument("--layers", default="headline,pad1,cin32,56px", help=f"of {', '.join(LAYERS)}")
    parser.add_argument("--dtype", default="bf16", choices=DTYPES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--build", action="store_true", help="build every tree's extension first, side by side")
    parser.add_argument("--cache", default="/tmp/fx_fuse_ab", help="the build caches' folder, one per tree")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layers = [name for name in args.layers.split(",") if name]
    unknown = [name for name in layers if name not in LAYERS]
    if unknown:
        raise SystemExit(f"bench_ab: unknown layers {unknown}; known: {', '.join(LAYERS)}")
    if args.inner:
        print(json.dumps(time_layers(layers, args.dtype)))
        return
    trees = _parse_trees(args.tree)
    cache = Path(args.cache)
    if args.build:
        build_trees(trees, cache)
    readings: Dict[str, List[Dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            readings[name].append(run_tree(tree, cache / name, layers, args.dtype))
    sys.path.insert(0, str(HERE))
    from _timing import table

    print(f"the op, {args.dtype}, median ms of {args.rounds} round(s), trees in turn")
    print(table(summarize(readings, layers), headers=["layer", *trees]))


if __name__ == "__main__":
    main()
