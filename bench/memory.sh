#!/usr/bin/env bash
# The pool's resident-memory budget and idle release, one run on one machine, side by side:
# 1. throughput of examples/multi (GET /hello, and POST /echo with 1 KiB) with the defaults
#    (budget, idle slots given back after 10 s) and with an unbounded pool
#    (`--pool-resident-budget 1TiB --pool-idle-release 0`: every used slot keeps 16 MiB for good,
#    the behaviour before both), wrk -t1 -c32, with the ratio;
# 2. RSS over time (sampled every 250 ms) through three bursts of 16 concurrent guests that grow
#    their memory to the 128 MiB limit and the 20 s idle period after, for the defaults, the
#    unbounded pool, and the unbounded budget with the idle release on (`released`), as a CSV
#    and an SVG plot.
# Writes bench/results/memory-*.{md,csv,svg}. Needs wrk and curl; builds wms, the examples and
# the testkit guest (release).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
T=${CARGO_TARGET_DIR:-target}
command -v wrk >/dev/null || { echo "missing wrk: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "missing curl: apt-get install curl" >&2; exit 1; }
if [ -z "${WMS:-}" ]; then
  cargo build --release -p wms-cli >&2
  WMS="$T/release/wms"
fi
rustup target add wasm32-wasip2 >/dev/null
(cd examples && cargo build --release --target wasm32-wasip2 -p hello -p echo >&2)
(cd guests && CARGO_TARGET_DIR="$T/bench-guests" cargo build --release --target wasm32-wasip2 -p testkit >&2)
TESTKIT="$T/bench-guests/wasm32-wasip2/release/testkit.wasm"

work=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
sed -e "s#\"\.\./target/#\"$PWD/examples/target/#" -e '/^\[component.echo.build\]/,/^workdir/d' \
    -e '/^\[component.hello.build\]/,/^workdir/d' examples/multi/wms.toml > "$work/wms.toml"
mkdir -p "$work/kit"
printf 'spin_manifest_version = 2\n[application]\nname = "kit"\n[[trigger.http]]\nroute = "/..."\ncomponent = "kit"\n[component.kit]\nsource = "%s"\n' \
  "$(realpath "$TESTKIT")" > "$work/kit/wms.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start APP ARGS... -> sets PID and PORT
start() {
  local app=$1; shift
  PORT=$(free_port)
  WMS_CACHE_DIR="$work/cache" WMS_LOG=warn "$WMS" up "$app" --listen "127.0.0.1:$PORT" "$@" >/dev/null 2>"$work/log" &
  PID=$!
  for _ in $(seq 1 400); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && return 0; sleep 0.05; done
  cat "$work/log" >&2; return 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("a", 1024)
LUA
rps() { wrk -t1 -c32 -d"$DURATION" "$@" | awk '/Requests\/sec/ {printf "%.0f", $2}'; }

# The flags of each setting.
flags() {
  case $1 in
    default) ;;
    released) echo --pool-resident-budget 1TiB ;;
    unbounded) echo --pool-resident-budget 1TiB --pool-idle-release 0 ;;
  esac
}

# Alternating rounds, median of each: one run on this VM moves by up to 20%.
ROUNDS=${ROUNDS:-3}
declare -A R
for mode in default unbounded; do R[$mode,hello]=""; R[$mode,echo]=""; done
for _ in $(seq "$ROUNDS"); do
  for mode in default unbounded; do
    read -ra args <<< "$(flags "$mode")"
    start "$work" "${args[@]}"
    wrk -t1 -c32 -d2s "http://127.0.0.1:$PORT/hello" >/dev/null
    R[$mode,hello]+=" $(rps "http://127.0.0.1:$PORT/hello")"
    R[$mode,echo]+=" $(rps -s "$work/post.lua" "http://127.0.0.1:$PORT/echo/x")"
    stop
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for k in "${!R[@]}"; do R[$k]=$(echo "${R[$k]}" | median); done

CSV="$work/rss.csv"; echo "mode,seconds,rss_mib" > "$CSV"
for mode in default released unbounded; do
  read -ra args <<< "$(flags "$mode")"
  start "$work/kit" "${args[@]}"
  for _ in $(seq 20); do curl -s -o /dev/null "http://127.0.0.1:$PORT/fine"; done
  ( t0=$(date +%s.%N); while kill -0 "$PID" 2>/dev/null; do
      echo "$mode,$(echo "$(date +%s.%N) - $t0" | bc),$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$PID/status 2>/dev/null)"
      sleep 0.25; done >> "$CSV" ) &
  sampler=$!
  sleep 3
  for _ in 1 2 3; do
    hogs=()
    for _ in $(seq 16); do curl -s -o /dev/null "http://127.0.0.1:$PORT/hog" & hogs+=($!); done
    wait "${hogs[@]}" || true
    sleep 1
  done
  sleep 20
  stop; wait "$sampler" 2>/dev/null || true
done

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p bench/results
cp "$CSV" "bench/results/memory-$STAMP.csv"
python3 - "$CSV" "bench/results/memory-$STAMP.svg" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
series = {}
for r in rows:
    if r["rss_mib"]:
        series.setdefault(r["mode"], []).append((float(r["seconds"]), float(r["rss_mib"])))
W, H, L, B = 640, 360, 50, 30
tmax = max(t for s in series.values() for t, _ in s)
ymax = max(v for s in series.values() for _, v in s) * 1.1
x = lambda t: L + (W - L - 10) * t / tmax
y = lambda v: H - B - (H - B - 10) * v / ymax
colors = {"default": "#1f77b4", "released": "#2ca02c", "unbounded": "#d62728"}
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-10}" y2="{H-B}" stroke="black"/><line x1="{L}" y1="10" x2="{L}" y2="{H-B}" stroke="black"/>']
for i in range(0, 6):
    v = ymax * i / 5
    out.append(f'<text x="{L-5}" y="{y(v)+4:.0f}" text-anchor="end">{v:.0f}</text>')
for i in range(0, 6):
    t = tmax * i / 5
    out.append(f'<text x="{x(t):.0f}" y="{H-B+15}" text-anchor="middle">{t:.0f} s</text>')
out.append(f'<text x="12" y="{H/2}" transform="rotate(-90 12 {H/2})" text-anchor="middle">RSS (MiB)</text>')
for k, (mode, pts) in enumerate(sorted(series.items())):
    d = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts)
    out.append(f'<polyline fill="none" stroke="{colors.get(mode, "black")}" stroke-width="2" points="{d}"/>')
    out.append(f'<text x="{W-150}" y="{25+15*k}" fill="{colors.get(mode, "black")}">{mode}</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out))
PY
summary() {
  python3 - "$CSV" "$1" <<'PY'
import csv, sys
pts = [(float(r["seconds"]), float(r["rss_mib"])) for r in csv.DictReader(open(sys.argv[1])) if r["mode"] == sys.argv[2] and r["rss_mib"]]
base = pts[min(8, len(pts) - 1)][1]
peak = max(v for _, v in pts)
print(f"{base:.0f} | {peak:.0f} | {pts[-1][1]:.0f}")
PY
}
OUT="bench/results/memory-$STAMP.md"
{
echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); wrk -t1 -c32 -d$DURATION, median of $ROUNDS alternating rounds"
echo
echo "| request | defaults (req/s) | unbounded (req/s) | defaults / unbounded |"
echo "|---|---:|---:|---:|"
for k in hello echo; do
  echo "| $k | ${R[default,$k]} | ${R[unbounded,$k]} | $(python3 -c "print(f'{${R[default,$k]}/${R[unbounded,$k]}:.3f}')") |"
done
echo
echo "| setting | RSS before the bursts (MiB) | peak | 20 s after the last burst |"
echo "|---|---:|---:|---:|"
for mode in default released unbounded; do echo "| $mode | $(summary $mode) |"; done
echo
echo "RSS over time: memory-$STAMP.svg (data: memory-$STAMP.csv)"
} | tee "$OUT"
