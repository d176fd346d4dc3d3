#!/usr/bin/env python3
"""Lossless subscriptions against paced and plain unpaced runs, with the
publisher and every subscriber in separate processes (docs/performance.md,
"Lossless subscriptions").

    scripts/lossless-bench.py [--busd PATH] [--rounds 5] [--msgs 2000000]

One external release busd in a temp dir; per round, interleaved, for 1 -> 1
and fan-out 1 -> 4 at 128 B: paced, unpaced, and unpaced lossless
(`bus-cli bench pubsub|fanout --processes [--unpaced [--lossless]]`).
Prints each configuration's median delivered rate and loss, and the
lossless/paced ratio.
"""

import argparse
import json
import os
import statistics
import subprocess

import external_busd

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [
    ("paced", []),
    ("unpaced", ["--unpaced"]),
    ("unpaced lossless", ["--unpaced", "--lossless"]),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busd", default=os.path.join(HERE, "target/release/busd"))
    ap.add_argument("--cli", default=os.path.join(HERE, "target/release/bus-cli"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--msgs", type=int, default=2_000_000)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    with external_busd.running(args.busd) as (_, sock):
        results = {}
        for r in range(args.rounds):
            for mode in ("pubsub", "fanout"):
                for name, flags in CONFIGS:
                    out = subprocess.run(
                        [args.cli, "--address", sock, "bench", mode, "--processes", "--json",
                         "--msgs", str(args.msgs), "--size", str(args.size), *flags],
                        check=True, capture_output=True, text=True, timeout=600,
                    ).stdout
                    rep = json.loads(out)
                    lost = rep["dropped"] / max(1, rep["sent"] * rep["subs"])
                    results.setdefault((mode, name), []).append(
                        (rep["deliver"]["msgs_per_s"], lost, rep["publish"]["msgs_per_s"]))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"{'workload':<8} {'config':<18} {'delivered/s (median, min-max)':<34} {'published/s':>12} {'lost':>7}")
    for (mode, name), rs in results.items():
        deliv = [x[0] for x in rs]
        print(f"{mode:<8} {name:<18} {statistics.median(deliv) / 1e6:6.2f} M ({min(deliv) / 1e6:.2f}-{max(deliv) / 1e6:.2f})"
              f"{'':>14} {statistics.median(x[2] for x in rs) / 1e6:9.2f} M {statistics.median(x[1] for x in rs):7.1%}")
    for mode in ("pubsub", "fanout"):
        ratios = [l[0] / p[0] for p, l in zip(results[(mode, "paced")], results[(mode, "unpaced lossless")])]
        print(f"{mode}: lossless unpaced / paced delivered: {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}-{max(ratios):.3f}, per-round pairs)")


if __name__ == "__main__":
    main()
