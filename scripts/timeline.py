"""Time stamps inside the patch kernel: where a tile's time goes, step by step.

A timing build is a copy of the package whose patch kernel records ``clock64`` at each step
of its loops in CTA 0 (the consumers' first thread and the first patch thread) into global
buffers; a second kernel, launched after it, prints them. Nothing is printed from the
patch kernel itself: a call there makes ptxas serialize its wgmmas (C7510), and the stamps
would overstate the multiplies.

    python scripts/timeline.py build /tmp/tl        # the stamped copy
    cd /tmp && FX_FUSE_CACHE_DIR=/tmp/fxc_tl PYTHONPATH=/tmp/tl \\
        python /path/to/scripts/timeline.py run hl --dtype bf16 > tl.txt
    python scripts/timeline.py summary tl.txt       # medians per step

Consumer events: 0 a tile starts; 7 / 8 around a slice's wait for its weights and 5 / 6
around the wait for a unit's patch (the planes kernel); 1 its multiplies are done (the
planes kernel; elsewhere the summary takes 2); 2 past the consumers' barrier; 3 the
epilogue is done; 4 the next tile's patch is there. Producer (patch warps) events, per
unit: 9 wait for the slot, 10 it is free, 11 the staged rows are written out, 12 the patch
copies are issued, 13 they have landed, 14 the patch is published (transposed or
interleaved).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Buffers, the stamp macros and the dump kernel, ahead of the kernel code.
_DECLARATIONS = (
    "static __device__ unsigned long long fx_tl_c[4096], fx_tl_p[4096], fx_tl_cal[2];\n"
    "static __device__ int fx_tl_nc, fx_tl_np;\n"
    "static __global__ void fx_tl_dump() {\n"
    '  printf("TLCAL %llu %llu\\n", fx_tl_cal[0], fx_tl_cal[1]);\n'
    '  for (int q = 0; q < fx_tl_nc; ++q) printf("TLC %d %llu\\n", static_cast<int>(fx_tl_c[q] >> 56), '
    "fx_tl_c[q] & 0xffffffffffffffull);\n"
    '  for (int q = 0; q < fx_tl_np; ++q) printf("TLP %d %llu\\n", static_cast<int>(fx_tl_p[q] >> 56), '
    "fx_tl_p[q] & 0xffffffffffffffull);\n"
    "}\n"
    "#define TLC(e) do { if (blockIdx.x == 0 && ct == 0 && c == 0 && fx_tln < 4090) fx_tl_c[fx_tln++] = "
    "(static_cast<unsigned long long>(e) << 56) | (clock64() & 0xffffffffffffffull); } while (0)\n"
    "#define TLP(e) do { if (blockIdx.x == 0 && tid == 0 && fx_tlnp < 4090) fx_tl_p[fx_tlnp++] = "
    "(static_cast<unsigned long long>(e) << 56) | (clock64() & 0xffffffffffffffull); } while (0)\n"
    "__device__ __forceinline__ unsigned long long fx_gt() { unsigned long long t; "
    'asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }\n'
)

# (anchor, replacement) in kernels/patch_conv.cuh; each anchor occurs exactly once.
STAMPS = [
    ("// A weight slice: BN output channels x one 128-byte K slice.",
     _DECLARATIONS + "// A weight slice: BN output channels x one 128-byte K slice."),
    # consumers
    ("    mbar_wait(k.bar(kBarWFull + static_cast<int>(ring.slot)), ring.parity);\n"
     "    multiply_planes(cur, pt.shift, ring.slot, s == 0);",
     "    TLC(7);\n    mbar_wait(k.bar(kBarWFull + static_cast<int>(ring.slot)), ring.parity);\n"
     "    TLC(8);\n    multiply_planes(cur, pt.shift, ring.slot, s == 0);"),
    ("  const int row0 = 128 * c + 16 * wq + g;  // this thread's first tile row\n",
     "  const int row0 = 128 * c + 16 * wq + g;  // this thread's first tile row\n"
     "  int fx_tln = 0;\n  unsigned long long fx_g0 = fx_gt(), fx_c0 = clock64();\n"),
    ("    if (s + 1 < k.S && nxt.tap == 0) mbar_wait(k.bar(kBarPFull + nxt.slot), "
     "static_cast<uint32_t>(u >> 1) & 1u);\n    ring.advance();",
     "    if (s + 1 < k.S && nxt.tap == 0) { TLC(5); mbar_wait(k.bar(kBarPFull + nxt.slot), "
     "static_cast<uint32_t>(u >> 1) & 1u); TLC(6); }\n    ring.advance();"),
    ("  for (int64_t i = 0; i < k.my_tiles; ++i) {\n    load_channels(pt, static_cast<int>(i & 1));",
     "  for (int64_t i = 0; i < k.my_tiles; ++i) {\n    TLC(0);\n    load_channels(pt, static_cast<int>(i & 1));"),
    ("      for (int s = 0; s < k.S; ++s) cur = step_planes(s, pt, cur);\n      wgmma_wait<0>();",
     "      for (int s = 0; s < k.S; ++s) cur = step_planes(s, pt, cur);\n      wgmma_wait<0>();\n      TLC(1);"),
    ("      named_sync(kBarConsumers, 256);\n      if constexpr (CL) {\n",
     "      named_sync(kBarConsumers, 256);\n      TLC(2);\n      if constexpr (CL) {\n"),
    ("                           c == 0 ? kPatchBN : lane * 4 + wq, kPatchConsumerThreads / 2);\n        }\n",
     "                           c == 0 ? kPatchBN : lane * 4 + wq, kPatchConsumerThreads / 2);\n        }\n"
     "        TLC(3);\n"),
    ("      mbar_wait(k.bar(kBarPFull + cur.slot), static_cast<uint32_t>(u >> 1) & 1u);\n"
     "      if constexpr (MATH == Math::kF32x3) load_kstep(cur, pt.shift, 0, raw);\n"
     "      else if constexpr (!PLANES) build_a(cur, pt.shift, frag[0]);\n    }\n  }\n",
     "      mbar_wait(k.bar(kBarPFull + cur.slot), static_cast<uint32_t>(u >> 1) & 1u);\n      TLC(4);\n"
     "      if constexpr (MATH == Math::kF32x3) load_kstep(cur, pt.shift, 0, raw);\n"
     "      else if constexpr (!PLANES) build_a(cur, pt.shift, frag[0]);\n    }\n  }\n"
     "  if (blockIdx.x == 0 && ct == 0 && c == 0) {\n"
     "    fx_tl_cal[0] = fx_gt() - fx_g0; fx_tl_cal[1] = clock64() - fx_c0; fx_tl_nc = fx_tln;\n  }\n"),
    # tiles whose output is not staged: their epilogue between 2 and 3 as well
    ("      named_sync(kBarConsumer + c, 128);  // this consumer's bias and `other` are written\n"
     "      store_tile(pt, static_cast<int>(i & 1), Stage<0, 2>{0});\n",
     "      named_sync(kBarConsumer + c, 128);  // this consumer's bias and `other` are written\n      TLC(2);\n"
     "      store_tile(pt, static_cast<int>(i & 1), Stage<0, 2>{0});\n      TLC(3);\n"),
    # patch warps
    ("  int64_t u = 0;  // units so far: unit u goes into slot u % 2\n",
     "  int64_t u = 0;  // units so far: unit u goes into slot u % 2\n  int fx_tlnp = 0;\n"),
    ("      mbar_wait(k.bar(kBarPEmpty + slot), parity ^ 1u);\n"
     "      if (ROWS && cb == first_staged && i >= back) write_rows(i - back, slot);\n"
     "      issue_patch(i, cb, slot);\n      mbar_wait(k.bar(kBarPLanded + slot), parity);\n",
     "      TLP(9);\n      mbar_wait(k.bar(kBarPEmpty + slot), parity ^ 1u);\n      TLP(10);\n"
     "      if (ROWS && cb == first_staged && i >= back) write_rows(i - back, slot);\n      TLP(11);\n"
     "      issue_patch(i, cb, slot);\n      TLP(12);\n"
     "      mbar_wait(k.bar(kBarPLanded + slot), parity);\n      TLP(13);\n"),
    ("      mbar_arrive(k.bar(kBarPFull + slot));\n    }\n  }\n",
     "      mbar_arrive(k.bar(kBarPFull + slot));\n      TLP(14);\n    }\n  }\n"
     "  if (blockIdx.x == 0 && tid == 0) fx_tl_np = fx_tlnp;\n"),
]

# kernels/launch.cuh: the dump kernel right after the patch kernel.
_LAUNCH = "  kernel<<<static_cast<unsigned>(grid), kPatchThreads, smem, stream>>>(with_tile_walk(p, BN), x_map, y_map);\n"
LAUNCH = (_LAUNCH, _LAUNCH + "  fx_tl_dump<<<1, 1, 0, stream>>>();\n")


def _replace_once(text: str, anchor: str, replacement: str, where: str) -> str:
    if text.count(anchor) != 1:
        raise ValueError(f"timeline: {where}: expected one occurrence of {anchor[:70]!r}, "
                         f"found {text.count(anchor)} (the kernel source changed)")
    return text.replace(anchor, replacement)


def stamp_sources(kernels: Path) -> None:
    """Add the stamps to the kernel sources in ``kernels`` (a copy of kernels/)."""
    conv = kernels / "patch_conv.cuh"
    text = conv.read_text()
    for anchor, replacement in STAMPS:
        text = _replace_once(text, anchor, replacement, conv.name)
    conv.write_text(text)
    launch = kernels / "launch.cuh"
    launch.write_text(_replace_once(launch.read_text(), *LAUNCH, launch.name))


def build(dest: Path) -> None:
    """A copy of the package in ``dest`` (new or empty) with the stamped patch kernel."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"timeline: {dest} is not empty")
    for name in ("fx_fuse", "kernels"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    stamp_sources(dest / "kernels")


SHAPES = {  # x's shape, output channels, padding (3x3, stride 1)
    "hl": ((128, 64, 128, 128), 128, 0),
    "pad1": ((128, 64, 128, 128), 128, 1),
    "c32": ((128, 32, 128, 128), 128, 0),
}


def run(shape: str, dtype: str) -> None:
    """The op twice on `shape`: warm, then the launch whose stamps the summary reads."""
    import torch

    import fx_fuse

    torch.backends.cudnn.allow_tf32 = True
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    xs, cout, pad = SHAPES[shape]
    x = torch.rand(xs, device="cuda").to(dt)
    w = (torch.randn(cout, xs[1], 3, 3, device="cuda") / (xs[1] * 9) ** 0.5).to(dt)
    b = torch.randn(cout, device="cuda").to(dt)
    other = torch.randn(cout, 1, 1, device="cuda").to(dt)
    with torch.no_grad():
        fx_fuse.conv2d_relu_add(x, w, b, other, 1, pad)
        torch.cuda.synchronize()
        print("=== RECORDED", flush=True)
        fx_fuse.conv2d_relu_add(x, w, b, other, 1, pad)
        torch.cuda.synchronize()


def _median_line(label: str, values: list, us) -> str:
    return (f"  {label:12s} {us(statistics.median(values)):6.2f}  "
            f"(min {us(min(values)):.2f} max {us(max(values)):.2f})")


def summary(text: str) -> list:
    """Medians (us) of each step over the recorded launch's steady tiles and units."""
    lines = text.split("=== RECORDED")[-1].splitlines()
    cal, consumer, producer = None, [], []
    for line in lines:
        f = line.split()
        if f and f[0] == "TLCAL":
            cal = int(f[2]) / int(f[1])  # clocks per ns
        elif f and f[0] in ("TLC", "TLP"):
            (consumer if f[0] == "TLC" else producer).append((int(f[1]), int(f[2])))
    if not cal:
        raise ValueError("timeline: no TLCAL line (not the output of a timing build?)")

    def us(clocks):
        return clocks / cal / 1000

    out = [f"clock {cal:.3f} GHz, {len(consumer)} consumer and {len(producer)} producer stamps"]
    tiles = []  # per tile: the events in order
    for e, t in consumer:
        if e == 0:
            tiles.append([])
        if tiles:
            tiles[-1].append((e, t))
    steady = tiles[2:-2]
    weights = [[b - a for (ea, a), (eb, b) in zip(ev, ev[1:]) if ea == 7 and eb == 8] for ev in steady]
    if steady and all(weights):
        out.append(_median_line("weight waits", [sum(w) for w in weights], us) + " a tile")
        issued = [[t for e, t in ev if e == 8] for ev in steady]  # each slice's wgmmas issued
        gaps = [[b - a for a, b in zip(s, s[1:])] for s in issued]
        out.append("  slice to slice (us): " + " ".join(
            f"{us(statistics.median(g[j] for g in gaps)):.2f}" for j in range(min(map(len, gaps)))))
    rows = []
    for ev, nxt in zip(tiles, tiles[1:]):
        first = dict(reversed(ev))  # each event's first time
        first.setdefault(1, first.get(2))  # without the planes' stamp: up to the barrier
        if any(first.get(k) is None for k in (0, 1, 2, 3)):
            continue
        mid = first[6] - first[5] if 5 in first and 6 in first else 0
        rows.append({"tile": nxt[0][1] - first[0], "multiplies": first[1] - first[0] - mid,
                     "unit wait": mid, "barrier": first[2] - first[1], "epilogue": first[3] - first[2],
                     "next wait": first[4] - first[3] if 4 in first else 0})
    rows = rows[2:-2]
    if rows:
        out.append(f"consumers, {len(rows)} tiles, us:")
        out += [_median_line(k, [r[k] for r in rows], us) for k in rows[0]]
    units = []
    for e, t in producer:
        if e == 9:
            units.append({})
        if units:
            units[-1].setdefault(e, t)
    steps = {"slot wait": (9, 10), "write-out": (10, 11), "issue": (11, 12), "landing": (12, 13),
             "rearrange": (13, 14)}
    for parity in (0, 1):
        done = [u for j, u in enumerate(units) if j % 2 == parity and all(k in u for k in range(9, 15))][2:-2]
        if done:
            out.append(f"patch warps, units of parity {parity} ({len(done)}), us:")
            out += [_median_line(name, [u[b] - u[a] for u in done], us) for name, (a, b) in steps.items()]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="a stamped copy of the package").add_argument("dest", type=Path)
    r = sub.add_parser("run", help="the op twice (run with PYTHONPATH at a timing build)")
    r.add_argument("shape", choices=sorted(SHAPES))
    r.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    sub.add_parser("summary", help="medians from run's output").add_argument("file", type=Path)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.dest)
    elif args.command == "run":
        run(args.shape, args.dtype)
    else:
        print("\n".join(summary(args.file.read_text())))


if __name__ == "__main__":
    sys.exit(main())
