#!/usr/bin/env bash
# Soak: at least REQUESTS (1,000,000) requests through examples/multi, alternating `GET /hello`
# and `POST /echo/...` with a 1 KiB body (every 16th request a 64 KiB body), with wrk on
# loopback. Passes only with zero errors and zero non-2xx answers, resident memory after the run
# within 10% of what it was after the first ~10,000 requests, and every instance slot back: a
# final burst of exactly max_concurrent_requests connections gets no 503. Prints the figures
# and writes them to bench/results/.
#
# Needs wrk and curl (apt-get install wrk curl). Builds wms and the example (release).
# Settings (environment): REQUESTS (1000000), CONNECTIONS (32), SLOTS (64: the app's
# max_concurrent_requests for the run), WMS (a wms binary to use instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-1000000}
CONNECTIONS=${CONNECTIONS:-32}
SLOTS=${SLOTS:-64}
T=${CARGO_TARGET_DIR:-target}

need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install $2" >&2; exit 1; }; }
need wrk wrk
need curl curl

if [ -z "${WMS:-}" ]; then
  echo "== building wms (release)" >&2
  cargo build --release -p wms-cli >&2
  WMS="$T/release/wms"
fi
rustup target add wasm32-wasip2 >/dev/null
(cd examples && cargo build --release --target wasm32-wasip2 -p hello -p echo >&2)

work=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# The example's manifest with absolute sources and a process limit of SLOTS instances.
sed -e "s#\"\.\./target/#\"$PWD/examples/target/#" -e '/^\[component.echo.build\]/,/^workdir/d' \
    -e '/^\[component.hello.build\]/,/^workdir/d' examples/multi/wms.toml > "$work/wms.toml"
# [application.tool.wms] must follow [application]: splice it in after the description line.
python3 - "$work/wms.toml" "$SLOTS" <<'PY'
import sys
p, slots = sys.argv[1], sys.argv[2]
text = open(p).read()
text = text.replace("\n[[trigger.http]]", f"\n[application.tool.wms]\nmax_concurrent_requests = {slots}\n\n[[trigger.http]]", 1)
open(p, "w").write(text)
PY

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
WMS_CACHE_DIR="$work/cache" WMS_LOG=warn "$WMS" up "$work" --listen "127.0.0.1:$port" >"$work/out" 2>"$work/log" &
PID=$!
for _ in $(seq 1 400); do curl -sf "http://127.0.0.1:$port/hello" >/dev/null 2>&1 && break; sleep 0.05; done
curl -sf "http://127.0.0.1:$port/hello" >/dev/null || { cat "$work/log" >&2; exit 1; }

cat > "$work/mix.lua" <<'LUA'
local n = 0
local small = string.rep("a", 1024)
local large = string.rep("b", 65536)
request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("GET", "/hello")
  end
  local body = (n % 16 == 1) and large or small
  return wrk.format("POST", "/echo/soak", { ["content-type"] = "application/octet-stream" }, body)
end
LUA

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$PID/status"; }
# run SECONDS CONNECTIONS -> "requests errors non2xx"
run() {
  wrk -t1 -c"$2" -d"$1"s -s "$work/mix.lua" "http://127.0.0.1:$port" | python3 -c '
import re, sys
t = sys.stdin.read()
req = int(re.search(r"(\d+) requests in", t).group(1))
err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = sum(int(x) for x in err.groups()) if err else 0
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(req, errors, int(bad.group(1)) if bad else 0)'
}

total=0; errors=0; bad=0
while [ "$total" -lt 10000 ]; do
  read -r r e b < <(run 2 "$CONNECTIONS"); total=$((total + r)); errors=$((errors + e)); bad=$((bad + b))
done
rss_first=$(rss)
first=$total
started=$(date +%s)
while [ "$total" -lt "$REQUESTS" ]; do
  read -r r e b < <(run 10 "$CONNECTIONS")
  total=$((total + r)); errors=$((errors + e)); bad=$((bad + b))
  echo "  $total requests, $errors errors, $bad non-2xx, RSS $(rss) KiB" >&2
done
elapsed=$(( $(date +%s) - started ))
rss_last=$(rss)
# Every slot back: a burst at exactly the process limit must see no 503.
read -r r_b e_b b_b < <(run 3 "$SLOTS")

growth=$(python3 -c "print(f'{($rss_last - $rss_first) / $rss_first * 100:+.1f}')")
ok=yes
[ "$errors" -eq 0 ] && [ "$bad" -eq 0 ] || ok=no
python3 -c "import sys; sys.exit(0 if $rss_last <= $rss_first * 1.10 else 1)" || ok=no
[ "$e_b" -eq 0 ] && [ "$b_b" -eq 0 ] || ok=no

OUT="bench/results/soak-$(date -u +%Y%m%dT%H%M%SZ).md"
mkdir -p bench/results
{
echo "machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| figure | value |"
echo "|---|---:|"
echo "| requests (GET /hello, POST /echo 1 KiB, every 16th 64 KiB) | $total |"
echo "| connections | $CONNECTIONS |"
echo "| duration of the main run | ${elapsed} s |"
echo "| socket errors | $errors |"
echo "| non-2xx answers | $bad |"
echo "| RSS after the first $first requests | $rss_first KiB |"
echo "| RSS after all | $rss_last KiB ($growth%) |"
echo "| burst at the limit ($SLOTS connections, 3 s): requests, errors, non-2xx | $r_b, $e_b, $b_b |"
echo "| verdict | $ok |"
} | tee "$OUT"
[ "$ok" = yes ]
