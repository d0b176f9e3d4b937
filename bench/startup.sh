#!/usr/bin/env bash
# Start-up to first response with an empty compile cache and with a warm one, `wms compile`
# time per target, and binary sizes. One run, one machine; prints a markdown report and writes
# it to bench/results/. Needs a release wms with the cross-compile feature:
#   cargo build --release -p wms-cli --features cross-compile
# Settings: RUNS (5), APPS ("examples/spin-hello examples/multi").
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
APPS=${APPS:-"examples/spin-hello examples/multi"}
T=${CARGO_TARGET_DIR:-target}
WMS="$T/release/wms"
[ -x "$WMS" ] || { echo "build it first: cargo build --release -p wms-cli --features cross-compile" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# first_response APP CACHE -> seconds from exec to the first 2xx/4xx answer
first_response() {
  local app=$1 cache=$2 port start pid
  port=$(free_port)
  start=$(now)
  WMS_CACHE_DIR=$cache "$WMS" up "$app" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
  pid=$!
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.005; done
  echo "$(now) - $start" | bc -l
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

OUT="bench/results/startup-$(date -u +%Y%m%dT%H%M%SZ).md"
{
echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); median of $RUNS runs"
echo
echo "| app | cold cache (s) | warm cache (s) | cold / warm |"
echo "|---|---:|---:|---:|"
for app in $APPS; do
  # make sure the app is built
  cold=(); warm=()
  for _ in $(seq "$RUNS"); do
    cache=$(mktemp -d)
    cold+=("$(first_response "$app" "$cache")")
    warm+=("$(first_response "$app" "$cache")")
    rm -rf "$cache"
  done
  c=$(printf '%s\n' "${cold[@]}" | median); w=$(printf '%s\n' "${warm[@]}" | median)
  printf '| %s | %.3f | %.3f | %.1fx |\n' "$app" "$c" "$w" "$(echo "$c / $w" | bc -l)"
done
echo
echo "| wms compile examples/spin-hello --target | time (s) | output |"
echo "|---|---:|---:|"
for target in x86_64 aarch64 riscv64gc pulley64; do
  dir=$(mktemp -d)
  start=$(now)
  WMS_LOG=error "$WMS" compile examples/spin-hello --target "$target" -o "$dir" >/dev/null
  t=$(echo "$(now) - $start" | bc -l)
  printf '| %s | %.3f | %s KiB |\n' "$target" "$t" "$(( $(stat -c %s "$dir"/*.cwasm) / 1024 ))"
  rm -rf "$dir"
done
echo
echo "| binary | size (MiB) |"
echo "|---|---:|"
for b in "$T/release/wms" "$T"/*-unknown-linux-*/release/wms; do
  [ -f "$b" ] && printf '| %s | %.1f |\n' "${b#"$T"/}" "$(echo "$(stat -c %s "$b") / 1048576" | bc -l)"
done
} | tee "$OUT"
