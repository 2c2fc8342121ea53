"""Where a kernel spends its time, from an ncu source-level (SASS) CSV export.

Instructions executed the same number of times belong to the same part of the kernel (once
per slice, once per tile, a copy loop ...), so this groups the sampled warp stalls by
execution count, then prints the stall reasons, the hottest instructions, and the mbarrier
waits: each `try_wait` (SYNCS.PHASECHK ... TRYWAIT) with the samples of the branch that
retries it, i.e. the time warps spent waiting on that barrier, by its shared address.

    ncu --clock-control none --kernel-name regex:patch --launch-skip 1 --launch-count 1 \\
        --section SourceCounters --section WarpStateStats --page source --print-source sass \\
        --csv python3 scripts/profile_headline.py fp32 > src.csv
    python3 scripts/ncu_regions.py src.csv
"""

import collections
import csv
import sys


def main(path: str) -> None:
    rows = list(csv.reader(open(path)))
    start = next(i for i, r in enumerate(rows) if r and "Source" in r)
    header = rows[start]
    data = [r for r in rows[start + 1 :] if len(r) == len(header)]
    col = {h: i for i, h in enumerate(header)}
    samples = col["Warp Stall Sampling (All Samples)"]
    executed = col["Instructions Executed"]
    stalls = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]

    def num(row, i):
        return float(row[i] or 0)

    total = sum(num(r, samples) for r in data) or 1.0
    groups = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for r in data:
        g = groups[round(num(r, executed) / 1000)]
        g[0] += num(r, samples)
        g[1] += 1
        g[2] += num(r, executed)
    print(f"{total:.0f} samples")
    for k, (s, n, ex) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"executed ~{k}k times: {s / total * 100:5.1f}% of samples, {n} instructions, {ex:.3g} executed")
    reasons = {h: sum(num(r, col[h]) for r in data) / total * 100 for h in stalls}
    print(", ".join(f"{h} {v:.1f}%" for h, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]))
    for r in sorted(data, key=lambda r: -num(r, samples))[:14]:
        top = max(stalls, key=lambda h: num(r, col[h]))
        print(f"{num(r, samples) / total * 100:4.1f}% {r[executed]:>9} {top:22} {r[col['Source']][:60]}")
    print("mbarrier waits (samples at the branch that retries, times executed, the try_wait):")
    source = col["Source"]
    waits = [
        (num(nxt, samples), r)
        for r, nxt in zip(data, data[1:])
        if "TRYWAIT" in r[source] and "BRA" in nxt[source] and num(r, executed) > 0
    ]
    for s, r in sorted(waits, key=lambda w: -w[0])[:8]:
        print(f"{s / total * 100:4.1f}% {r[executed]:>9} {r[source].strip()[:70]}")


if __name__ == "__main__":
    main(sys.argv[1])
