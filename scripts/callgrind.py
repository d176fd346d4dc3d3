#!/usr/bin/env python3
"""Instructions per message, per process, under callgrind (docs/performance.md,
"Where a message's instructions go").

    scripts/callgrind.py [--msgs 200000] [--size 128] [--subjects 1] [--top 12] [--cache]

Runs an external release busd and `bus-cli bench pubsub --processes`
(the publisher and the subscriber each a `bench-worker` process) under
callgrind, twice: with --msgs and with twice as many. What each process
executes per message is the difference between the two runs over the
extra messages, so start-up and handshakes cancel out. Instruction counts
are stable on shared VMs where timings are not. Prints each process's
instructions per message, and the subscriber's and the daemon's top
functions (inclusive of nothing: self cost), per message.

With --cache it runs cachegrind's cache simulation instead and prints
each process's simulated first-level data-cache misses (reads and writes)
and last-level misses per message next to its instructions: work that
touches state for many subjects costs misses that instruction counts do
not show (docs/performance.md, "What 4096 subjects cost").
"""

import argparse
import glob
import os
import re
import subprocess
import tempfile

import external_busd

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(path):
    """(command line, total Ir, {function: self Ir}) of one callgrind file,
    read through callgrind_annotate (functions summed over the source files
    their code was inlined from)."""
    cmd = ""
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("cmd:"):
                cmd = line[4:].strip()
                break
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path],
                         check=True, capture_output=True, text=True).stdout
    total, funcs = 0, {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if not m:
            continue
        ir, what = int(m.group(1).replace(",", "")), m.group(2)
        if what == "events annotated":
            continue
        if what == "PROGRAM TOTALS":
            total = ir
            continue
        what = re.sub(r" \([\d,]+x\)$", "", re.sub(r" \[[^\]]*\]$", "", what))
        fn = what.split(":", 1)[1] if ":" in what else what
        funcs[fn] = funcs.get(fn, 0) + ir
    return cmd, total, funcs


def parse_cache(path):
    """(command line, {event: count}) of one cachegrind file."""
    cmd, events, totals = "", [], []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("cmd:"):
                cmd = line[4:].strip()
            elif line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                totals = [int(x) for x in line.split()[1:]]
    return cmd, dict(zip(events, totals))


def run(args, msgs, out):
    os.makedirs(out, exist_ok=True)
    if args.cache:
        vg = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--trace-children=yes",
              f"--cachegrind-out-file={out}/cg.%p"]
    else:
        vg = ["valgrind", "--tool=callgrind", "--trace-children=yes",
              f"--callgrind-out-file={out}/cg.%p"]
    with external_busd.running(args.busd, prefix=vg) as (_, sock):
        subprocess.run(vg + [args.cli, "--address", sock, "bench", "pubsub", "--processes",
                             "--msgs", str(msgs), "--size", str(args.size),
                             "--subjects", str(args.subjects)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=1800)
    procs = {}
    for path in glob.glob(f"{out}/cg.*"):
        if args.cache:
            cmd, funcs = parse_cache(path)
            total = funcs.get("Ir", 0)
        else:
            cmd, total, funcs = parse(path)
        if "busd" in cmd.split()[0]:
            role = "busd"
        elif "bench-worker" in cmd:
            role = "subscriber" if '"Sub"' in cmd else "publisher"
        else:
            role = "bench parent"
        procs.setdefault(role, []).append((total, funcs, cmd))
    return procs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busd", default=os.path.join(HERE, "target/release/busd"))
    ap.add_argument("--cli", default=os.path.join(HERE, "target/release/bus-cli"))
    ap.add_argument("--msgs", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--subjects", type=int, default=1, help="publish over this many subjects")
    ap.add_argument("--cache", action="store_true",
                    help="simulate the caches (cachegrind): misses per message instead of top functions")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        small = run(args, args.msgs, os.path.join(d, "small"))
        large = run(args, 2 * args.msgs, os.path.join(d, "large"))
    print(f"instructions per message, {args.size} B, 1 -> 1 over {args.subjects} subject(s), separate processes "
          f"({args.msgs} vs {2 * args.msgs} messages):")
    for role in ("publisher", "busd", "subscriber", "bench parent"):
        if role not in small or role not in large:
            continue
        a = sum(t for t, _, _ in small[role])
        b = sum(t for t, _, _ in large[role])
        print(f"  {role:<13} {(b - a) / args.msgs:8.1f}")
    if args.cache:
        print("simulated misses per message: first-level data reads, writes; last level (cachegrind)")
        for role in ("publisher", "busd", "subscriber"):
            if role not in small or role not in large:
                continue
            per = {}
            for ev in ("D1mr", "D1mw", "DLmr", "DLmw"):
                a = sum(f.get(ev, 0) for _, f, _ in small[role])
                b = sum(f.get(ev, 0) for _, f, _ in large[role])
                per[ev] = (b - a) / args.msgs
            print(f"  {role:<13} D1 {per['D1mr']:5.2f} read {per['D1mw']:5.2f} write   "
                  f"LL {per['DLmr'] + per['DLmw']:5.2f}")
        return
    for role in ("subscriber", "busd", "publisher"):
        if role not in small or role not in large:
            continue
        fa, fb = {}, {}
        for _, funcs, _ in small[role]:
            for k, v in funcs.items():
                fa[k] = fa.get(k, 0) + v
        for _, funcs, _ in large[role]:
            for k, v in funcs.items():
                fb[k] = fb.get(k, 0) + v
        diff = sorted(((fb.get(k, 0) - fa.get(k, 0), k) for k in fb), reverse=True)
        print(f"{role}: top functions, self instructions per message")
        for v, k in diff[: args.top]:
            print(f"  {v / args.msgs:7.1f}  {k[:110]}")


if __name__ == "__main__":
    main()
