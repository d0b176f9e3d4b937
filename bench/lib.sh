# Shared by the benchmark scripts (sourced): tools, free ports, waiting for a server,
# one wrk measurement (expects THREADS, CONNECTIONS, DURATION and WARMUP) and the native image.

need() { command -v "$1" >/dev/null || { echo "missing $1: $2" >&2; exit 1; }; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_up() { for _ in $(seq 1 200); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server at $1 did not come up" >&2; return 1; }

# measure URL -> "rps p50_ms p99_ms" (after a warm-up; any non-2xx answer fails the run)
measure() {
  local url=$1
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "$url" >/dev/null
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
if errors: sys.exit("non-2xx responses: " + errors.group(1))
print(f"{rps:.0f} {p50:.3f} {p99:.3f}")'
}

# native_image NATIVE DIR: a `scratch` image of the native service, made by hand as an OCI layout
# in DIR/layout (tag 1): one gzip layer with NATIVE, stripped, at /native-hello; the config's
# entry point runs it. Used by bench/oci.sh and bench/shim.sh.
native_image() {
  local native=$1 dir=$2 sha diff layer lsize config csize man msize
  sha() { sha256sum "$1" | cut -d' ' -f1; }
  local L="$dir/layout"; mkdir -p "$L/blobs/sha256" "$dir/rootfs"
  strip -o "$dir/rootfs/native-hello" "$native"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$dir/rootfs" -cf "$dir/layer.tar" native-hello
  gzip -9n -c "$dir/layer.tar" > "$dir/layer.tar.gz"
  diff=$(sha "$dir/layer.tar"); layer=$(sha "$dir/layer.tar.gz"); lsize=$(stat -c%s "$dir/layer.tar.gz")
  cp "$dir/layer.tar.gz" "$L/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/native-hello"],"ExposedPorts":{"3000/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" > "$dir/config.json"
  config=$(sha "$dir/config.json"); csize=$(stat -c%s "$dir/config.json")
  cp "$dir/config.json" "$L/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' "$config" "$csize" "$layer" "$lsize" > "$dir/manifest.json"
  man=$(sha "$dir/manifest.json"); msize=$(stat -c%s "$dir/manifest.json")
  cp "$dir/manifest.json" "$L/blobs/sha256/$man"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"1"}}]}' "$man" "$msize" > "$L/index.json"
}
