#!/usr/bin/env bash
# Side-by-side HTTP benchmark, one run on one machine:
#   wasi:http 0.2: wms up examples/hello  vs  wasmtime serve (same Wasmtime version, same
#                  component; a fresh instance per request in both)
#   wasi:http 0.3: wms up with guests/p3kit  vs  wasmtime serve -Sp3 (same component; instance
#                  reuse on in both, with the same bounds: 128 requests, 16 at once, 1 s idle)
#   vs  a native hyper hello-world (bench/native-hello)
# with the same wrk settings for each. Prints requests/s, p50 and p99 latency and the ratios,
# and writes the table to bench/results/.
#
# Settings (environment): DURATION (10s), CONNECTIONS (32), THREADS (1), WARMUP (3s), ROUNDS (3:
# every server is measured once per round, in turn; the table gives each one's median),
# WMS_BENCH_CACHE (where wasmtime-cli is installed; default /var/cache/wms-bench), WASMTIME (an
# existing wasmtime 48.0.8 binary with `serve` and `component-model-async` to use instead).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-3}
WASMTIME_VERSION=48.0.8
CACHE=${WMS_BENCH_CACHE:-/var/cache/wms-bench}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need wrk "apt-get install wrk"
need curl "apt-get install curl"

echo "== building wms and native-hello (release)" >&2
rustup target add wasm32-wasip2 >/dev/null
cargo build --release -p wms-cli -p native-hello >&2
(cd examples && cargo build --release --target wasm32-wasip2 -p hello >&2)
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
(cd guests && CARGO_TARGET_DIR="$TARGET_DIR/bench-guests" cargo build --release --target wasm32-wasip2 -p p3kit >&2)
P3=$(realpath "$TARGET_DIR/bench-guests/wasm32-wasip2/release/p3kit.wasm")
P3APP=$(mktemp -d)
printf 'spin_manifest_version = 2\n[application]\nname = "p3"\n[[trigger.http]]\nroute = "/..."\ncomponent = "p3"\n[component.p3]\nsource = "%s"\n' "$P3" > "$P3APP/wms.toml"

# wasmtime serve with what it needs here (serve, 0.3 and the pooling allocator), which builds
# in about a quarter of the time of the default feature set.
if [ -z "${WASMTIME:-}" ]; then
  WASMTIME="$CACHE/wasmtime-$WASMTIME_VERSION/bin/wasmtime"
  if [ ! -x "$WASMTIME" ]; then
    echo "== installing wasmtime-cli $WASMTIME_VERSION into $CACHE (once)" >&2
    cargo install --locked "wasmtime-cli@$WASMTIME_VERSION" --no-default-features \
      --features serve,run,component-model-async,cranelift,pooling-allocator,parallel-compilation \
      --root "$CACHE/wasmtime-$WASMTIME_VERSION" >&2
  fi
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'cleanup; rm -rf "$P3APP"' EXIT

# All five servers run side by side (idle ones cost nothing) and are measured in turn, ROUNDS
# times: a VM's neighbours move single figures by 10-20%, the median of interleaved rounds much
# less.
declare -A URL
start() { # NAME URL-PATH COMMAND... (@ADDR@ in COMMAND: the server's address)
  local name=$1 path=$2 addr; shift 2
  addr="127.0.0.1:$(free_port)"
  "${@//@ADDR@/$addr}" >/dev/null 2>"/tmp/wms-bench-$name.log" &
  PIDS+=($!)
  URL[$name]="http://$addr$path"
  wait_up "${URL[$name]}"
}
start wms / "$TARGET_DIR/release/wms" up examples/hello --listen @ADDR@
start wasmtime / "$WASMTIME" serve -O pooling-allocator=y -S cli=y --addr @ADDR@ "$HELLO"
start wms3 /hello "$TARGET_DIR/release/wms" up "$P3APP" --listen @ADDR@
start wasmtime3 /hello "$WASMTIME" serve -O pooling-allocator=y -S cli=y -S p3=y --addr @ADDR@ "$P3"
start native / "$TARGET_DIR/release/native-hello" @ADDR@

declare -A RESULT
NAMES=(wms wasmtime wms3 wasmtime3 native)
for round in $(seq 1 "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    r=$(measure "${URL[$name]}")
    echo "round $round: $name $r" >&2
    RESULT[$name]="${RESULT[$name]:-}${RESULT[$name]:+,}$r"
  done
done

mkdir -p bench/results
OUT="bench/results/http-$(date -u +%Y%m%dT%H%M%SZ).md"
python3 - "$OUT" "${RESULT[wms]}" "${RESULT[wasmtime]}" "${RESULT[native]}" "${RESULT[wms3]}" "${RESULT[wasmtime3]}" <<PY | tee "$OUT"
import sys, platform, os, statistics
def median(rounds):
    runs = [list(map(float, r.split())) for r in rounds.split(",")]
    return [statistics.median(col) for col in zip(*runs)]
out, wms, wt, nat, wms3, wt3 = sys.argv[1], *[median(a) for a in sys.argv[2:]]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu}; wrk -t$THREADS -c$CONNECTIONS -d$DURATION (after $WARMUP warm-up), median of $ROUNDS interleaved rounds")
print()
print("| server | req/s | p50 ms | p99 ms |")
print("|---|---:|---:|---:|")
for name, r in [("wms up (hello.wasm, 0.2)", wms), ("wasmtime serve $WASMTIME_VERSION, pooling (hello.wasm, 0.2)", wt), ("wms up (p3kit.wasm, 0.3, reuse)", wms3), ("wasmtime serve $WASMTIME_VERSION, pooling, -Sp3 (p3kit.wasm, 0.3, reuse)", wt3), ("native hyper (native-hello)", nat)]:
    print(f"| {name} | {r[0]:.0f} | {r[1]:.3f} | {r[2]:.3f} |")
print()
print(f"wms / wasmtime serve: throughput {wms[0]/wt[0]:.2f}x, p99 {wms[2]/wt[2]:.2f}x")
print(f"wms / native: throughput {wms[0]/nat[0]:.2f}x, p99 {wms[2]/nat[2]:.2f}x")
print(f"0.3 with reuse, wms / wasmtime serve: throughput {wms3[0]/wt3[0]:.2f}x, p99 {wms3[2]/wt3[2]:.2f}x")
print(f"0.3 with reuse, wms / native: throughput {wms3[0]/nat[0]:.2f}x, p99 {wms3[2]/nat[2]:.2f}x")
PY
