#!/bin/sh
# bench upstream: two busd hosts joined through one nats-server on loopback,
# 1 -> 1 across them, against two native NATS clients through the same
# server, in the same run (docs/performance.md, "Through a NATS upstream").
#
#   scripts/upstream-bench.sh [BUSD] [bus-cli bench flags...]
#
# BUSD defaults to target/release/busd; bus-cli is target/release/bus-cli.
# Everything runs in a temp dir, on ports nats-server picks, and is stopped
# at the end.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
busd=${1:-$here/target/release/busd}
[ $# -gt 0 ] && shift
cli=$here/target/release/bus-cli
dir=$(mktemp -d)
trap 'kill $(cat "$dir"/*.pid 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT
printf 'listen: 127.0.0.1:-1\nserver_name: bench\n' >"$dir/nats.conf"
nats-server -c "$dir/nats.conf" 2>"$dir/nats.log" & echo $! >"$dir/nats.pid"
i=0
until port=$(sed -n 's/.*Listening for client connections on 127.0.0.1:\([0-9]*\).*/\1/p' "$dir/nats.log") && [ -n "$port" ]; do
  i=$((i + 1)); [ $i -lt 200 ] || { echo "nats-server did not start" >&2; exit 1; }; sleep 0.05
done
url=nats://127.0.0.1:$port
for h in a b; do
  "$busd" --socket "$dir/$h.sock" --node-id "host-$h" --upstream "$url" 2>"$dir/$h.log" & echo $! >"$dir/$h.pid"
done
for h in a b; do
  i=0; until [ -S "$dir/$h.sock" ]; do i=$((i + 1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done
done
"$cli" --address "$dir/a.sock" bench upstream --to "$dir/b.sock" --nats "$url" "$@"
