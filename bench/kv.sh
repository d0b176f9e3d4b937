#!/usr/bin/env bash
# Key-value throughput, one run on one machine: get and set of one key holding a 100-byte value,
#   through wms   a Spin SDK 5 guest (guests/spin-kv, spin_sdk::key_value) served by `wms up`
#                 (release), each operation one HTTP request (wrk), on
#                 - the embedded store (SQLite in the state directory, WAL, synchronous = FULL)
#                 - a Redis store (Debian's redis-server on a loopback port, no persistence)
#   natively      the same operations from native clients, same concurrency:
#                 - embedded: Python's sqlite3 running the embedded store's statements on a file
#                   set up the same way (one transaction a set, as wms commits each), one thread
#                   (wms serializes a store's operations on one connection too)
#                 - Redis: redis-benchmark GET and SET with a 100-byte value
# Prints operations per second side by side, with the ratios, and writes the table to
# bench/results/. Settings (environment): DURATION (10s), CONNECTIONS (8), WARMUP (2s).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-8}
THREADS=1
WARMUP=${WARMUP:-2s}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

# shellcheck source=bench/lib.sh
. bench/lib.sh
need wrk "apt-get install wrk"
need curl "apt-get install curl"
need redis-server "apt-get install redis-server"
need redis-benchmark "apt-get install redis-tools"

echo "== building wms (release) and guests/spin-kv" >&2
rustup target add wasm32-wasip1 >/dev/null
cargo build --release -p wms-cli >&2
(cd guests/spin-kv && cargo build --release --target wasm32-wasip1 --target-dir "$TARGET_DIR/wasm-guests" >&2)
wasm="$(cd "$TARGET_DIR" && pwd)/wasm-guests/wasm32-wasip1/release/spin_kv.wasm"

work=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >/dev/null &
PIDS+=($!)
for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

mkdir -p "$work/app"
cat > "$work/app/wms.toml" <<EOF
spin_manifest_version = 2
[application]
name = "kv-bench"
[[trigger.http]]
route = "/..."
component = "kv"
[component.kv]
source = "$wasm"
key_value_stores = ["default", "shared"]
EOF
cat > "$work/app/runtime-config.toml" <<EOF
[key_value_store.shared]
type = "redis"
url = "redis://127.0.0.1:$rport"
EOF
port=$(free_port)
"$TARGET_DIR/release/wms" up "$work/app" --listen "127.0.0.1:$port" \
  --runtime-config-file "$work/app/runtime-config.toml" --state-dir "$work/state" \
  >/dev/null 2>"$work/wms.log" &
PIDS+=($!)
wait_up "http://127.0.0.1:$port/kv/exists?key=k"

value=$(head -c 100 /dev/zero | tr '\0' 'v')
for store in default shared; do
  curl -sf "http://127.0.0.1:$port/kv/set?store=$store&key=k&value=$value" >/dev/null
done

declare -A R
for store in default shared; do
  echo "== wms, store $store: get" >&2
  R[wms-$store-get]=$(measure "http://127.0.0.1:$port/kv/get?store=$store&key=k" | cut -d' ' -f1)
  echo "== wms, store $store: set" >&2
  R[wms-$store-set]=$(measure "http://127.0.0.1:$port/kv/set?store=$store&key=k&value=$value" | cut -d' ' -f1)
done

secs=${DURATION%s}
echo "== native: redis-benchmark" >&2
csv=$(redis-benchmark -p "$rport" -c "$CONNECTIONS" -n $((secs * 20000)) -d 100 -t get,set --csv)
R[native-shared-get]=$(echo "$csv" | awk -F'","' '/^"GET"/ {print int($2)}')
R[native-shared-set]=$(echo "$csv" | awk -F'","' '/^"SET"/ {print int($2)}')

echo "== native: Python sqlite3, the embedded store's statements" >&2
read -r sget sset < <(python3 - "$work/native.db" "$secs" "$value" <<'PY'
import sqlite3, sys, time
path, secs, value = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode()
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = FULL")
db.execute("CREATE TABLE kv (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key)) WITHOUT ROWID")
def run(op):
    n, end = 0, time.monotonic() + secs
    while time.monotonic() < end:
        op()
        n += 1
    return n / secs
def get():
    db.execute("SELECT value FROM kv WHERE store = ?1 AND key = ?2", ("default", "k")).fetchone()
def set_():
    db.execute("BEGIN")
    db.execute("SELECT length(key) + length(value) FROM kv WHERE store = ?1 AND key = ?2", ("default", "k")).fetchone()
    db.execute("INSERT INTO kv (store, key, value) VALUES (?1, ?2, ?3) ON CONFLICT (store, key) DO UPDATE SET value = excluded.value", ("default", "k", value))
    db.execute("COMMIT")
set_()
print(int(run(get)), int(run(set_)))
PY
)
R[native-default-get]=$sget
R[native-default-set]=$sset

mkdir -p bench/results
out="bench/results/kv-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wms: wrk -t1 -c$CONNECTIONS -d$DURATION (after $WARMUP warm-up), one HTTP request per operation; redis-benchmark -c$CONNECTIONS -d 100; sqlite3: one thread for $DURATION"
  echo
  echo "| store | operation | through wms (ops/s) | native client (ops/s) | wms / native |"
  echo "|---|---|---:|---:|---:|"
  for store in default shared; do
    name=$([ "$store" = default ] && echo "embedded (SQLite)" || echo "Redis")
    for op in get set; do
      w=${R[wms-$store-$op]}; n=${R[native-$store-$op]}
      echo "| $name | $op | $w | $n | $(python3 -c "print(f'{$w / $n:.2f}')") |"
    done
  done
} | tee "$out"
