#!/usr/bin/env bash
# The `hello` service under containerd, as the kubelet would start it: the wasm app under the wms
# shim (containerd-shim-wms-v1) against the same service as a native static binary
# (bench/native-hello, x86_64 musl) under runc. One containerd with its own root, state and
# socket (CRI off), one local docker-registry, everything on loopback, host network. For each
# image, RUNS rounds of: remove the image (and with it containerd's compiled-code cache), pull
# it (timed), start a container and time until its first HTTP 200 (cold: the first start after
# the pull, when the shim compiles), kill it, start it again (warm: code from containerd's
# cache). A third image carries precompiled code (`wms push --precompile`) from a publisher
# containerd's environment trusts, so its first start compiles nothing. Medians.
# Needs (as root): containerd, runc, docker-registry, skopeo, python3, the
# x86_64-unknown-linux-musl rustup target; builds the release shim and wms itself unless SHIM and
# WMS name binaries to use.
# Prints a markdown report and writes it to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
RUNS=${RUNS:-7}
T=${CARGO_TARGET_DIR:-target}
[ "$(id -u)" = 0 ] || { echo "containerd needs root: run as root" >&2; exit 1; }
for p in containerd runc docker-registry skopeo python3; do
  command -v "$p" >/dev/null || { echo "missing $p: apt-get install containerd runc docker-registry skopeo python3" >&2; exit 1; }
done
rustup target add x86_64-unknown-linux-musl >/dev/null
if [ -z "${SHIM:-}" ] || [ -z "${WMS:-}" ]; then
  cargo build --release -q -p wms-shim -p wms-cli
  SHIM="$T/release/containerd-shim-wms-v1"
  WMS="$T/release/wms"
fi
cargo build --release -q -p native-hello --target x86_64-unknown-linux-musl
NATIVE="$T/x86_64-unknown-linux-musl/release/native-hello"

WORK=$(mktemp -d)
cleanup() {
  [ -n "${CTRD_PID:-}" ] && kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null
  # Snapshots are mounts under the root; containerd unmounts them when it stops.
  umount -R "$WORK/root" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

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

HOST_TARGET=$(uname -m)
skopeo copy -q --dest-tls-verify=false "oci:$L:1" "docker://$R/native-hello:1"
export WMS_CACHE_DIR="$WORK/publisher"
"$WMS" push --containerd examples/hello "$R/hello-wasm:1" >/dev/null 2>&1
"$WMS" push --containerd --precompile "$HOST_TARGET" examples/hello "$R/hello-aot:1" >/dev/null 2>&1

# containerd, with the shim on its PATH and the precompiled image's publisher trusted.
mkdir -p "$WORK/bin"
ln -s "$(realpath "$SHIM")" "$WORK/bin/containerd-shim-wms-v1"
cat > "$WORK/containerd.toml" <<EOF
version = 2
root = "$WORK/root"
state = "$WORK/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$WORK/containerd.sock"
[ttrpc]
  address = "$WORK/containerd.sock.ttrpc"
EOF
PATH="$WORK/bin:$PATH" WMS_TRUSTED_PUBLISHERS="$R/hello-aot" \
  containerd --config "$WORK/containerd.toml" > "$WORK/containerd.log" 2>&1 &
CTRD_PID=$!
CTR=(ctr --address "$WORK/containerd.sock")
until "${CTR[@]}" version >/dev/null 2>&1; do sleep 0.1; done

# One image: RUNS rounds of pull, cold start, warm start; prints "pull cold warm size" medians.
measure() {
  python3 - "$WORK/containerd.sock" "$1" "$2" "$RUNS" <<'PY'
import socket, statistics, subprocess, sys, time
sock, ref, kind, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctr = ["ctr", "--address", sock]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def answered(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return c.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False

def start(cid):
    port = free_port()
    if kind == "native":
        args = ["run", "-d", "--net-host", ref, cid, "/native-hello", f"127.0.0.1:{port}"]
    else:
        args = ["run", "-d", "--net-host", "--runtime", "io.containerd.wms.v1",
                "--env", f"WMS_LISTEN=127.0.0.1:{port}", ref, cid]
    t0 = time.perf_counter()
    subprocess.run(ctr + args, check=True, stdout=subprocess.DEVNULL)
    while not answered(port):
        if time.perf_counter() - t0 > 120:
            sys.exit(f"{ref}: no answer within 120 s")
        time.sleep(0.002)
    took = time.perf_counter() - t0
    subprocess.run(ctr + ["task", "kill", "-s", "SIGKILL", cid], check=True)
    while subprocess.run(ctr + ["task", "delete", cid], capture_output=True).returncode != 0:
        time.sleep(0.01)
    subprocess.run(ctr + ["container", "delete", cid], check=True)
    return took

pulls, colds, warms = [], [], []
for i in range(runs):
    subprocess.run(ctr + ["image", "rm", "--sync", ref], capture_output=True)
    t0 = time.perf_counter()
    subprocess.run(ctr + ["image", "pull", "--plain-http", ref], check=True, stdout=subprocess.DEVNULL)
    pulls.append(time.perf_counter() - t0)
    colds.append(start(f"bench-{i}-cold"))
    warms.append(start(f"bench-{i}-warm"))
out = subprocess.run(ctr + ["image", "ls"], check=True, capture_output=True, text=True).stdout
size = next(l.split()[3:5] for l in out.splitlines() if l.startswith(ref + " "))
ms = lambda xs: f"{statistics.median(xs) * 1000:.0f}"
print(ms(pulls), ms(colds), ms(warms), "".join(size))
PY
}

read -r NP NC NW NS < <(measure "$R/native-hello:1" native)
read -r WP WC WW WS < <(measure "$R/hello-wasm:1" wasm)
read -r AP AC AW AS < <(measure "$R/hello-aot:1" wasm)
grep -q "using the precompiled code of $R/hello-aot:1" "$WORK/containerd.log" \
  || { echo "the precompiled image was compiled on the node: see the trust set-up" >&2; exit 1; }

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
REPORT=$(cat <<EOF
The \`hello\` service under containerd $(containerd --version | awk '{print $3}') on this machine ($(nproc) cores,
$(uname -m)), host network, from a local registry; median of $RUNS rounds; $(date -u +%Y-%m-%d).
Start = \`ctr run -d\` until the first HTTP 200. Cold = first start after the pull (the wms shim
compiles the app and containerd keeps the code); warm = the next start.

| image | size | pull (ms) | cold start (ms) | warm start (ms) |
|---|---:|---:|---:|---:|
| native-hello (static musl, stripped, scratch, gzip layer) under runc | $NS | $NP | $NC | $NW |
| examples/hello, \`wms push --containerd\`, under the wms shim | $WS | $WP | $WC | $WW |
| the same with \`--precompile $HOST_TARGET\`, publisher trusted | $AS | $AP | $AC | $AW |

wms shim / runc: cold $(ratio "$WC" "$NC")x, warm $(ratio "$WW" "$NW")x, cold with trusted precompiled code $(ratio "$AC" "$NC")x.
EOF
)
echo "$REPORT"
mkdir -p bench/results
echo "$REPORT" > "bench/results/shim-$(date -u +%Y%m%dT%H%M%SZ).md"
