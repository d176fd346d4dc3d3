#!/usr/bin/env python3
"""Large payloads in sealed memfds against the copying path and the raw
stream (docs/fds.md, "Large payloads").

    scripts/memfd-bench.py [--busd PATH] [--rounds 3]

One external release busd in a temp dir (max_frame 32 MiB, so the copying
path can carry 16 MiB). Per round, interleaved, at 64 KiB, 1 MiB and
16 MiB: `bus-cli bench pubsub --baseline` with and without `--memfd`.
Each run measures its own raw Unix-stream baseline. Prints the medians of
delivered MB/s, the ratio to that run's raw stream, and the daemon's CPU
per message.
"""

import argparse
import json
import os
import statistics
import subprocess

import external_busd

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(64 << 10, 20_000), (1 << 20, 1_500), (16 << 20, 100)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busd", default=os.path.join(HERE, "target/release/busd"))
    ap.add_argument("--cli", default=os.path.join(HERE, "target/release/bus-cli"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    results = {}
    with external_busd.running(args.busd, ["--max-frame", "32MiB", "--max-pending", "64MiB"]) as (_, sock):
        for r in range(args.rounds):
            for size, msgs in SIZES:
                for path, flags in (("copy", []), ("memfd", ["--memfd"])):
                    out = subprocess.run(
                        [args.cli, "--address", sock, "bench", "pubsub", "--baseline", "--json",
                         "--size", str(size), "--msgs", str(msgs), *flags],
                        check=True, capture_output=True, text=True, timeout=600,
                    ).stdout
                    rep = json.loads(out)
                    mb = rep["deliver"]["mb_per_s"]
                    raw = rep["baseline_stream"]["mb_per_s"]
                    results.setdefault((size, path), []).append(
                        (mb, mb / raw, raw, rep["cpu_daemon_ns_per_msg"]))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"{'size':>8} {'path':<6} {'MB/s':>8} {'/ raw stream':>13} {'raw MB/s':>9} {'daemon us/msg':>14}")
    for (size, path), rs in results.items():
        med = [statistics.median(x[i] for x in rs) for i in range(4)]
        print(f"{size >> 10:>6}Ki {path:<6} {med[0]:8.0f} {med[1]:12.3f}x {med[2]:9.0f} {med[3] / 1e3:14.1f}")


if __name__ == "__main__":
    main()
