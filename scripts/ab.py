#!/usr/bin/env python3
"""Interleaved A/B of release builds on the standard workloads.

Each variant is a directory holding a `busd` and a `bus-cli` built in
release. Every round runs every workload once per variant, in an order that
rotates from round to round, each against a fresh external busd of that
variant. Prints the median, min and max per workload and variant, and each
variant's median against the first. Timings are only ever compared within
one run of this script.

    scripts/ab.py --rounds 5 base=/tmp/ab/base new=target/release

A variant written NAME=DIR@scrape=HZ runs its busd with `--metrics` and
scrapes `/metrics` HZ times a second (0: back to back) while it runs: the
cost of serving metrics to the data path. NAME=DIR@config=FILE@uid=UID
runs busd with `--config FILE` and the bench as UID (through setpriv; the
socket is made reachable for it, and FILE must let UID in): the cost of
an access policy.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# (name, bench arguments, JSON path of the figure, True if higher is better)
WORKLOADS = [
    ("1->1 128 B", ["pubsub", "--size", "128", "--msgs", "3000000"], ("deliver", "msgs_per_s"), True),
    ("1->1 128 B --batch 64", ["pubsub", "--size", "128", "--msgs", "3000000", "--batch", "64"], ("deliver", "msgs_per_s"), True),
    ("1->1 over 4096 subjects", ["pubsub", "--size", "128", "--msgs", "2000000", "--subjects", "4096"], ("deliver", "msgs_per_s"), True),
    ("fan-out 1->4", ["fanout", "--subs", "4", "--size", "128", "--msgs", "1000000"], ("deliver", "msgs_per_s"), True),
    ("request/reply p50 us", ["reqrep", "--size", "128", "--msgs", "20000"], ("latency", "p50_us"), False),
    ("1->1 16 KiB", ["pubsub", "--size", "16384", "--msgs", "150000"], ("deliver", "msgs_per_s"), True),
    ("routing 100k subs", ["routing", "--subscriptions", "100000", "--msgs", "1000000"], ("publish", "msgs_per_s"), True),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape_loop(url, hz, stop):
    """GETs url hz times a second (0: back to back) until stop is set."""
    scrapes = 0
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
            scrapes += 1
        except OSError:
            time.sleep(0.01)
        if hz:
            stop.wait(1 / hz)
    return scrapes


def start_daemon(variant_dir, tmp, extra=()):
    sock = os.path.join(tmp, "busd.sock")
    proc = subprocess.Popen(
        [os.path.join(variant_dir, "busd"), "--socket", sock, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            sys.exit(f"busd of {variant_dir} did not start")
        time.sleep(0.02)
    return proc, sock


def run_once(variant, args):
    variant_dir, *options = variant.split("@")
    extra, scraper, stop, as_uid = [], None, threading.Event(), []
    for option in options:
        key, _, value = option.partition("=")
        if key == "scrape":
            port = free_port()
            extra += ["--metrics", f"127.0.0.1:{port}"]
            url = f"http://127.0.0.1:{port}/metrics"
            scraper = threading.Thread(target=scrape_loop, args=(url, float(value), stop), daemon=True)
        elif key == "config":
            extra += ["--config", value, "--socket-mode", "0o666"]
        elif key == "uid":
            as_uid = ["setpriv", f"--reuid={value}", f"--regid={value}", "--clear-groups"]
        else:
            sys.exit(f"unknown variant option {option!r} (scrape=HZ, config=FILE, uid=UID)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        proc, sock = start_daemon(variant_dir, tmp, extra)
        if scraper:
            scraper.start()
        try:
            out = subprocess.run(
                [*as_uid, os.path.join(variant_dir, "bus-cli"), "--address", f"unix:{sock}", "bench", *args, "--json"],
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            stop.set()
            if scraper:
                scraper.join()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if out.returncode != 0:
            sys.exit(f"bench failed ({variant_dir} {args}): {out.stderr}")
        return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", action="append", default=[], help="run only workloads whose name contains this")
    ap.add_argument("variants", nargs="+", help="NAME=DIR with busd and bus-cli")
    opts = ap.parse_args()
    variants = [v.split("=", 1) for v in opts.variants]
    workloads = [w for w in WORKLOADS if not opts.only or any(o in w[0] for o in opts.only)]
    results = {(w[0], name): [] for w in workloads for name, _ in variants}
    for r in range(opts.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for wname, args, path, _ in workloads:
            for name, d in order:
                report = run_once(d, args)
                value = report[path[0]][path[1]]
                results[(wname, name)].append(value)
                print(f"round {r + 1} {wname:<26} {name:<10} {value:14.2f}", file=sys.stderr, flush=True)
    first = variants[0][0]
    print(f"{'workload':<26} {'variant':<10} {'median':>14} {'min':>14} {'max':>14}  vs {first}")
    for wname, _, _, higher in workloads:
        base = statistics.median(results[(wname, first)])
        for name, _ in variants:
            vals = results[(wname, name)]
            med = statistics.median(vals)
            rel = med / base if higher else base / med
            print(f"{wname:<26} {name:<10} {med:14.2f} {min(vals):14.2f} {max(vals):14.2f}  {rel:6.3f}x")


if __name__ == "__main__":
    main()
