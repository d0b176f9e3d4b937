#!/usr/bin/env bash
# Image size and pull time: the `hello` service as a wasm artifact and as a wms app image, against
# the same service as a native static binary (bench/native-hello, x86_64 musl) in a `scratch`
# container image. One local docker-registry, one run of each pull after another, median of RUNS.
# Needs: a release wms (cargo build --release -p wms-cli), docker-registry, skopeo, the
# x86_64-unknown-linux-musl rustup target. Prints a markdown report and writes it to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
RUNS=${RUNS:-10}
T=${CARGO_TARGET_DIR:-target}
WMS="$T/release/wms"
[ -x "$WMS" ] || { echo "build it first: cargo build --release -p wms-cli" >&2; exit 1; }
HELLO=examples/target/wasm32-wasip2/release/hello.wasm
[ -f "$HELLO" ] || (cd examples && cargo build --release --target wasm32-wasip2 -p hello -q)

WORK=$(mktemp -d)
trap 'kill $REG_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

# The native service, static, stripped as one would ship it.
cargo build --release -q -p native-hello --target x86_64-unknown-linux-musl
NATIVE="$T/x86_64-unknown-linux-musl/release/native-hello"
# The native service in a scratch image, made by hand (bench/lib.sh).
native_image "$NATIVE" "$WORK"
L="$WORK/layout"

# The registry.
cat > "$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:0
EOF
docker-registry serve "$WORK/registry.yml" > /dev/null 2> "$WORK/registry.log" &
REG_PID=$!
until grep -q "listening on" "$WORK/registry.log" 2>/dev/null; do sleep 0.05; done
R=$(grep -o 'listening on [0-9.:]*' "$WORK/registry.log" | cut -d' ' -f3)

skopeo copy -q --dest-tls-verify=false "oci:$L:1" "docker://$R/native-hello:1"
export WMS_CACHE_DIR="$WORK/publisher"
"$WMS" push "$HELLO" "$R/hello-wasm:1" >/dev/null 2>&1
"$WMS" push examples/hello "$R/hello-app:1" >/dev/null 2>&1

# image_bytes REF -> manifest + config + layers, as stored in the registry
image_bytes() {
  local raw
  raw=$(skopeo inspect --raw --tls-verify=false "docker://$1")
  echo "$raw" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(len(sys.argv[1].encode()) + m["config"]["size"] + sum(l["size"] for l in m["layers"]))' "$raw"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s.%N; }
time_skopeo() {
  for _ in $(seq "$RUNS"); do
    rm -rf "$WORK/pulled"; local s; s=$(now)
    skopeo copy -q --src-tls-verify=false "docker://$1" "dir:$WORK/pulled"
    echo "$(now) - $s" | bc -l
  done | median
}
time_wms() {
  for _ in $(seq "$RUNS"); do
    rm -rf "$WORK/consumer"; local s; s=$(now)
    WMS_CACHE_DIR="$WORK/consumer" "$WMS" pull "$1" >/dev/null 2>&1
    echo "$(now) - $s" | bc -l
  done | median
}

NATIVE_B=$(image_bytes "$R/native-hello:1"); WASM_B=$(image_bytes "$R/hello-wasm:1"); APP_B=$(image_bytes "$R/hello-app:1")
NATIVE_S=$(time_skopeo "$R/native-hello:1"); WASM_S=$(time_skopeo "$R/hello-wasm:1"); APP_S=$(time_skopeo "$R/hello-app:1")
WASM_W=$(time_wms "$R/hello-wasm:1"); APP_W=$(time_wms "$R/hello-app:1")

kib() { echo "scale=1; $1 / 1024" | bc -l; }
ms() { echo "scale=1; $1 * 1000 / 1" | bc -l; }
ratio() { echo "scale=1; $1 / $2" | bc -l; }
OUT="bench/results/oci-$(date -u +%Y%m%dT%H%M%SZ).md"
{
echo "machine: $(uname -m), $(nproc) cores; local docker-registry over loopback; median of $RUNS pulls into an empty destination"
echo
echo "| image | size (KiB) | native / this | pull, skopeo (ms) | pull, wms (ms) |"
echo "|---|---:|---:|---:|---:|"
echo "| native-hello, static x86_64 musl, stripped, scratch image (gzip layer) | $(kib "$NATIVE_B") | 1.0 | $(ms "$NATIVE_S") | - |"
echo "| hello.wasm as a wasm artifact | $(kib "$WASM_B") | $(ratio "$NATIVE_B" "$WASM_B") | $(ms "$WASM_S") | $(ms "$WASM_W") |"
echo "| examples/hello as a wms app image | $(kib "$APP_B") | $(ratio "$NATIVE_B" "$APP_B") | $(ms "$APP_S") | $(ms "$APP_W") |"
echo
echo "native binary unstripped: $(kib "$(stat -c%s "$NATIVE")") KiB, stripped: $(kib "$(stat -c%s "$WORK/native-hello")") KiB; hello.wasm: $(kib "$(stat -c%s "$HELLO")") KiB (uncompressed layer)"
} | tee "$OUT"
echo "written to $OUT" >&2
