#!/usr/bin/env python3
"""Before/after figures for the hardening of issue 21, against busd builds.

For each `name=DIR` (DIR holds a `busd` and a `bus-cli`), measures:

- preauth: RSS of a daemon with a TCP token while N connections that never
  authenticate each declare a 1 MiB frame and send 256 KiB of it; before,
  at the peak, and once they have closed.
- lockout: a daemon with --max-connections 200 and TCP; 200 TCP sockets
  that never authenticate are held open; does a local `bus-cli list` get
  served?
- race: ROUNDS rounds of three daemons started at the same instant on one
  path holding a stale socket file; how many rounds end with more than one
  of them still running.

    scripts/hardening.py before=/tmp/h/before after=target/release

Loopback only; every wait is bounded.
"""

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(cond, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    print(f"  (gave up waiting for {what})", file=sys.stderr)
    return False


def start(variant, tmp, *args):
    sock = os.path.join(tmp, "busd.sock")
    log = open(os.path.join(tmp, "busd.log"), "ab")
    proc = subprocess.Popen([os.path.join(variant, "busd"), "--socket", sock, *args],
                            stdout=log, stderr=log)
    wait_for(lambda: os.path.exists(sock), "the socket")
    return proc, sock


def tcp_port(tmp):
    # busd logs "busd listening address=tcp://127.0.0.1:PORT" (or similar).
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(os.path.join(tmp, "busd.log"), errors="replace") as f:
            for line in f:
                if "127.0.0.1:" in line and "listening" in line:
                    tail = line.split("127.0.0.1:")[1]
                    digits = "".join(c for c in tail[:6] if c.isdigit())
                    if digits:
                        return int(digits)
        time.sleep(0.02)
    raise RuntimeError("no TCP port in the log")


def supports(variant, flag):
    out = subprocess.run([os.path.join(variant, "busd"), "--help"], capture_output=True, text=True, timeout=20)
    return flag in out.stdout


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def preauth(variant, n):
    with tempfile.TemporaryDirectory() as tmp:
        token = os.path.join(tmp, "token")
        with open(token, "w") as f:
            f.write("s3cret-token\n")
        # Room for all of them in the budgets of builds that have them: this
        # measures what each costs, not the budgets.
        room = [a for flag in ("--max-pending-handshakes", "--max-tcp-connections")
                if supports(variant, flag) for a in (flag, str(n + 10))]
        proc, _ = start(variant, tmp, "--tcp", "127.0.0.1:0", "--token-file", token, *room)
        port = tcp_port(tmp)
        time.sleep(0.2)
        before = rss_kib(proc.pid)
        conns = []
        body = b"\0" * (256 << 10)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            try:
                s.send(struct.pack("<I", 1 << 20))
                s.send(body)
            except OSError:
                pass
            conns.append(s)
        peak = before
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            peak = max(peak, rss_kib(proc.pid))
            time.sleep(0.05)
        for s in conns:
            s.close()
        after = rss_kib(proc.pid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and after > before + 8 * 1024:
            time.sleep(0.1)
            after = rss_kib(proc.pid)
        stop(proc)
        return before, peak, after


def lockout(variant):
    with tempfile.TemporaryDirectory() as tmp:
        token = os.path.join(tmp, "token")
        with open(token, "w") as f:
            f.write("s3cret-token\n")
        proc, sock = start(variant, tmp, "--tcp", "127.0.0.1:0", "--token-file", token,
                           "--max-connections", "200")
        port = tcp_port(tmp)
        conns = []
        for _ in range(200):
            try:
                conns.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        time.sleep(0.3)
        out = subprocess.run([os.path.join(variant, "bus-cli"), "--address", sock, "list"],
                             capture_output=True, text=True, timeout=20)
        for s in conns:
            s.close()
        stop(proc)
        verdict = "served" if out.returncode == 0 else "refused: " + out.stderr.strip()
        return len(conns), verdict


def race(variant, rounds):
    doubled = 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            sock = os.path.join(tmp, "busd.sock")
            stale = socket.socket(socket.AF_UNIX)
            stale.bind(sock)
            stale.close()  # a socket file nobody listens on
            procs = [subprocess.Popen([os.path.join(variant, "busd"), "--socket", sock],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for _ in range(3)]
            wait_for(lambda: sum(p.poll() is not None for p in procs) >= 2, "the losers to exit", 3.0)
            time.sleep(0.2)
            alive = [p for p in procs if p.poll() is None]
            if len(alive) > 1:
                doubled += 1
            for p in alive:
                stop(p)
    return doubled


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--only", choices=["preauth", "lockout", "race"])
    ap.add_argument("variants", nargs="+")
    opts = ap.parse_args()
    for v in opts.variants:
        name, d = v.split("=", 1)
        if opts.only == "race":
            print(f"{name}: race: {race(d, opts.rounds)} of {opts.rounds} rounds with two daemons alive")
            continue
        before, peak, after = preauth(d, opts.conns)
        print(f"{name}: preauth {opts.conns} conns x 1 MiB declared, 256 KiB sent: "
              f"RSS {before / 1024:.1f} MiB before, {peak / 1024:.1f} peak "
              f"({(peak - before) * 1024 // opts.conns} B each), {after / 1024:.1f} after")
        held, verdict = lockout(d)
        print(f"{name}: lockout: {held} unauthenticated TCP sockets open, local list {verdict}")
        print(f"{name}: race: {race(d, opts.rounds)} of {opts.rounds} rounds with two daemons alive")


if __name__ == "__main__":
    main()
