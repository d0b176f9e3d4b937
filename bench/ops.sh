#!/usr/bin/env bash
# What observability costs, one run on one machine: `wms up examples/hello` in each of
#   quiet       WMS_LOG=warn: no request span (nothing at info is logged), nothing counted
#   off         the defaults: the request span (info) and no admin listener, nothing counted
#   metrics     --admin-listen: every metric counted (guest CPU time included), /metrics scraped
#               every second during the measurement, as Prometheus would
#   json        metrics, and WMS_LOG_FORMAT=json (at info: no line per successful request)
#   text-lines  metrics, and WMS_LOG=info,wms_server=debug: one text line per request
#   json-lines  the same in JSON
#   traces      metrics, and OTLP trace export (OTEL_EXPORTER_OTLP_ENDPOINT) to a local receiver
#               that accepts and drops every batch, with the default batch settings
# measured ROUNDS times each, interleaved (quiet, off, metrics, ..., quiet, off, ...) with the
# same wrk settings, so that a load change on the machine hits all alike; prints the median of
# the rounds per configuration, every round, and the ratios to `off`. Then the cost of the
# alternative to sampling guest CPU time at the epoch tick: reading the thread's CPU clock
# (CLOCK_THREAD_CPUTIME_ID, a system call) against the monotonic clock (vDSO), per read.
# Writes the table to bench/results/.
#
# Settings (environment): DURATION (10s), CONNECTIONS (32), THREADS (1), WARMUP (2s), ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need wrk "apt-get install wrk"
need curl "apt-get install curl"

echo "== building wms (release) and examples/hello" >&2
rustup target add wasm32-wasip2 >/dev/null
cargo build --release -p wms-cli >&2
(cd examples && cargo build --release --target wasm32-wasip2 -p hello >&2)

PIDS=()
# An OTLP/HTTP receiver for the traces configuration: reads each export, answers an empty
# ExportTraceServiceResponse, counts the batches in $OTLP_COUNT.
OTLP_PORT=$(free_port)
OTLP_COUNT=$(mktemp)
python3 - "$OTLP_PORT" "$OTLP_COUNT" <<'PY' &
import http.server, sys
port, count = int(sys.argv[1]), sys.argv[2]
n = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global n
        self.rfile.read(int(self.headers.get("content-length", 0)))
        n += 1
        open(count, "w").write(str(n))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
OTLP_PID=$!
cleanup() { for p in "${PIDS[@]}" "$OTLP_PID"; do kill "$p" 2>/dev/null || true; done; rm -f "$OTLP_COUNT"; }
trap cleanup EXIT

# run CONFIG -> one measurement of wms in that configuration
run() {
  local config=$1 port admin= args=() env=() scraper= log=/tmp/wms-bench-ops.log
  port=$(free_port)
  case $config in
    quiet) env=(WMS_LOG=warn) ;;
    off) ;;
    metrics) ;;
    json) env=(WMS_LOG_FORMAT=json) ;;
    text-lines) env=(WMS_LOG=info,wms_server=debug) ;;
    json-lines) env=(WMS_LOG=info,wms_server=debug WMS_LOG_FORMAT=json) ;;
    traces) env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT") ;;
  esac
  case $config in
    quiet|off) ;;
    *) admin=$(free_port); args=(--admin-listen "$admin") ;;
  esac
  env "${env[@]}" "$TARGET_DIR/release/wms" up examples/hello --listen "127.0.0.1:$port" "${args[@]}" >/dev/null 2>"$log" &
  PIDS+=($!)
  wait_up "http://127.0.0.1:$port/"
  if [ -n "$admin" ]; then
    (while sleep 1; do curl -sf "http://127.0.0.1:$admin/metrics" >/dev/null || true; done) &
    scraper=$!
  fi
  measure "http://127.0.0.1:$port/"
  if [ -n "$scraper" ]; then
    kill "$scraper"; wait "$scraper" 2>/dev/null || true
  fi
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
  echo "   $config: $(wc -l <"$log") log lines, $(cat "$OTLP_COUNT" 2>/dev/null || echo 0) OTLP exports so far" >&2
}

CONFIGS=(quiet off metrics json text-lines json-lines traces)
declare -A RESULTS
for round in $(seq 1 "$ROUNDS"); do
  for c in "${CONFIGS[@]}"; do
    echo "== round $round: $c" >&2
    RESULTS[$c]+="$(run "$c");"
  done
done

mkdir -p bench/results
OUT="bench/results/ops-$(date -u +%Y%m%dT%H%M%SZ).md"
python3 - "$OUT" "${CONFIGS[*]}" "${RESULTS[quiet]}" "${RESULTS[off]}" "${RESULTS[metrics]}" "${RESULTS[json]}" "${RESULTS[text-lines]}" "${RESULTS[json-lines]}" "${RESULTS[traces]}" <<PY | tee "$OUT"
import ctypes, os, platform, statistics, sys, time
out, configs, *runs = sys.argv[1:]
configs = configs.split()
runs = [[list(map(float, r.split())) for r in rs.split(";") if r] for rs in runs]
what = {
    "quiet": "WMS_LOG=warn: no request span, nothing counted",
    "off": "defaults: request span, nothing counted",
    "metrics": "--admin-listen, scraped every 1 s",
    "json": "metrics + WMS_LOG_FORMAT=json",
    "text-lines": "metrics + a text line per request",
    "json-lines": "metrics + a JSON line per request",
    "traces": "metrics + OTLP trace export (default batching)",
}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
load = open("/proc/loadavg").read().split()[:3]
print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {cpu}; load average at the end {' '.join(load)}")
print(f"wrk -t$THREADS -c$CONNECTIONS -d$DURATION (after $WARMUP warm-up), $ROUNDS rounds interleaved; median of the rounds")
print()
print("| wms up examples/hello | req/s | p50 ms | p99 ms | / off | req/s of each round |")
print("|---|---:|---:|---:|---:|---|")
med = {c: [statistics.median(r[i] for r in rs) for i in range(3)] for c, rs in zip(configs, runs)}
for c, rs in zip(configs, runs):
    m = med[c]
    print(f"| {c} ({what[c]}) | {m[0]:.0f} | {m[1]:.3f} | {m[2]:.3f} | {m[0]/med['off'][0]:.3f} | {', '.join(f'{r[0]:.0f}' for r in rs)} |")
print()
off = runs[configs.index("off")]
for c, rs in zip(configs, runs):
    if c != "off":
        print(f"{c} / off per round: {', '.join(f'{r[0] / o[0]:.3f}' for o, r in zip(off, rs))}")

# The alternative way to measure guest CPU time: the thread's CPU clock around each poll.
libc = ctypes.CDLL(None, use_errno=True)
class Timespec(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
ts = Timespec()
def per_call(clock, n=200_000):
    f = libc.clock_gettime
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter_ns()
        for _ in range(n):
            f(clock, ctypes.byref(ts))
        best = min(best, (time.perf_counter_ns() - t) / n)
    return best
CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID = 1, 3
mono, thread = per_call(CLOCK_MONOTONIC), per_call(CLOCK_THREAD_CPUTIME_ID)
print()
print(f"clock_gettime through ctypes, ns per call (best of 5 x 200k): CLOCK_MONOTONIC {mono:.0f}, CLOCK_THREAD_CPUTIME_ID {thread:.0f}; the thread CPU clock costs {thread - mono:.0f} ns more per read")
PY
