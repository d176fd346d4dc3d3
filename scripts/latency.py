#!/usr/bin/env python3
"""Request/reply latency against the relay ping-pong floor, with the CPUs
idle and with them busy, plus system calls and context switches per
request (docs/performance.md, "Request/reply latency").

    scripts/latency.py [--busd PATH] [--cli PATH] [--rounds 5] [--msgs 20000]

One external release busd in a temp dir. Each round runs, interleaved,
idle then busy (one spinning process per CPU, at normal priority):

- `bus-cli bench reqrep --baseline`: the bus's p50/p99 and the raw and
  relay ping-pongs measured in the same run;
- the same without `--baseline` under `perf stat` (system calls and
  context switches of busd, and of the bench process, which holds the
  requester and the responder), divided by the requests made.

Prints medians (min-max) per mode.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import external_busd

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVENTS = "raw_syscalls:sys_enter,context-switches"


def perf_counts(path):
    """{event: count} from a `perf stat -x,` output file."""
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[0].replace(".", "").isdigit():
                counts[parts[2]] = float(parts[0])
    return counts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busd", default=os.path.join(HERE, "target/release/busd"))
    ap.add_argument("--cli", default=os.path.join(HERE, "target/release/bus-cli"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--msgs", type=int, default=20000)
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as d, external_busd.running(args.busd) as (daemon, sock):
        burners = []
        try:
            bench = [args.cli, "--address", sock, "bench", "reqrep", "--json", "--msgs", str(args.msgs)]
            for r in range(args.rounds):
                for mode in ("idle", "busy"):
                    if mode == "busy":
                        burners = [subprocess.Popen(["sh", "-c", "while :; do :; done"])
                                   for _ in range(os.cpu_count() or 2)]
                    rep = json.loads(subprocess.run(bench + ["--baseline"], check=True, capture_output=True,
                                                    text=True, timeout=600).stdout)
                    daemon_out = os.path.join(d, "daemon.perf")
                    clients_out = os.path.join(d, "clients.perf")
                    watch = subprocess.Popen(["perf", "stat", "-x,", "-e", EVENTS, "-o", daemon_out,
                                              "-p", str(daemon.pid)])
                    time.sleep(0.3)
                    subprocess.run(["perf", "stat", "-x,", "-e", EVENTS, "-o", clients_out, "--"] + bench,
                                   check=True, capture_output=True, timeout=600)
                    watch.send_signal(2)
                    watch.wait(30)
                    for b in burners:
                        b.kill()
                        b.wait()
                    burners = []
                    n = args.msgs
                    dc, cc = perf_counts(daemon_out), perf_counts(clients_out)
                    lat = rep["latency"]
                    relay = rep["baseline_relay_pingpong"]
                    rows.setdefault(mode, []).append({
                        "p50": lat["p50_us"], "p99": lat["p99_us"],
                        "relay p50": relay["p50_us"], "relay p99": relay["p99_us"],
                        "raw p50": rep["baseline_pingpong"]["p50_us"],
                        "p50 / relay": lat["p50_us"] / relay["p50_us"],
                        "p99 / relay p99": lat["p99_us"] / relay["p99_us"],
                        "daemon syscalls": dc.get("raw_syscalls:sys_enter", 0) / n,
                        "daemon switches": dc.get("context-switches", 0) / n,
                        "clients syscalls": cc.get("raw_syscalls:sys_enter", 0) / n,
                        "clients switches": cc.get("context-switches", 0) / n,
                    })
                print(f"round {r + 1}/{args.rounds} done", flush=True)
        finally:
            for b in burners:
                b.kill()
    for mode, rs in rows.items():
        print(f"== {mode} ({len(rs)} rounds): median (min-max)")
        for key in rs[0]:
            xs = [x[key] for x in rs]
            print(f"  {key:<18} {statistics.median(xs):8.2f} ({min(xs):.2f}-{max(xs):.2f})")


if __name__ == "__main__":
    main()
