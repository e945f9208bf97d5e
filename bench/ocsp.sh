#!/usr/bin/env bash
# OCSP requests per second, GET and POST, for a mix of good, revoked and unknown serials
# (60/20/20), side by side in the same run with: OpenSSL's `openssl ocsp -index -port`
# responder answering the same requests, nginx serving a static file of the same size (GET),
# and a bare axum handler returning a fixed body of the same size (the framework's ceiling).
# wrk, keep-alive, bounded duration, loopback only: everything runs inside a private network
# namespace (`unshare -rn`), since `openssl ocsp -port` listens on all addresses.
#
# Usage: bench/ocsp.sh [DURATION] [CONNECTIONS] [CERTS]   (defaults 8s 16 2000)
#        ROUNDS=3 (each case runs once per round, rounds interleave; best round reported)
#        BENCH_OUT=FILE writes the results there instead of bench/results/ocsp.md
#        BENCH_STATUS_BIN=PATH runs another build's bench_status (responder and load generator)
#        instead of this tree's, to compare builds (A/B) on the same machine
#        PIN=1 (default on 2+ cores): every server runs on CPU 0 and every load generator on
#        CPU 1 (taskset), so client and server never compete for a core and each server gets
#        the same single core; PIN=0 lets the scheduler place them.
# Writes bench/results/ocsp.md. Needs wrk, nginx, openssl, unshare, SoftHSM2.
set -euo pipefail
cd "$(dirname "$0")/.."
dur="${1:-8s}"; conns="${2:-16}"; certs="${3:-2000}"
threads="${THREADS:-1}"
rounds="${ROUNDS:-3}"

if [ -z "${OCSP_BENCH_NETNS:-}" ]; then
  for t in wrk nginx openssl unshare curl; do
    command -v "$t" >/dev/null || [ -x "/usr/sbin/$t" ] || { echo "ocsp.sh: $t is required" >&2; exit 1; }
  done
  [ -n "${BENCH_STATUS_BIN:-}" ] || cargo build --release --locked -p ca-server --example bench_status >&2
  exec unshare -rn env OCSP_BENCH_NETNS=1 "$0" "$@"
fi

ip link set lo up
srv=(); cli=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  srv=(taskset -c 0); cli=(taskset -c 1)
fi
loadavg="$(cut -d' ' -f1-3 /proc/loadavg)"
target="${CARGO_TARGET_DIR:-target}"
bench_status="${BENCH_STATUS_BIN:-$target/release/examples/bench_status}"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# 1. The CA, its certificates and our responder (plus the bare axum ceiling).
mkfifo "$work/in"
"${srv[@]}" "$bench_status" "$work" "$certs" <"$work/in" >"$work/ours.env" 2>"$work/ours.log" &
pids+=($!)
exec 3>"$work/in"  # keeps the responder's stdin open until we exit
for _ in $(seq 1 600); do grep -q '^READY=1' "$work/ours.env" 2>/dev/null && break; sleep 0.1; done
grep -q '^READY=1' "$work/ours.env" || { cat "$work/ours.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/ours.env"

# 2. OpenSSL's responder on the same CA, index and requests (delegated signer, software key).
OPENSSL_PORT="$(free_port)"
"${srv[@]}" openssl ocsp -index "$work/index.txt" -port "$OPENSSL_PORT" -CA "$work/ca.pem" \
  -rsigner "$work/openssl-responder.pem" -rkey "$work/openssl-responder.key" -nmin 60 \
  >"$work/openssl.log" 2>&1 &
pids+=($!)

# 3. nginx serving the pre-signed response as a static file for any GET /ocsp/...
NGINX_PORT="$(free_port)"
mkdir -p "$work/www/ocsp"
cp "$work/static-response.der" "$work/www/response.der"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
user root root;  # inside the namespace we are uid 0; nobody is not mapped
daemon off;
master_process off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $work/www;
    location /ocsp/ { default_type application/ocsp-response; try_files /response.der =404; }
  }
}
CONF
"${srv[@]}" "$nginx_bin" -p "$work" -e "$work/nginx-error.log" -c "$work/nginx.conf" &
pids+=($!)

wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; echo "port $1 not up" >&2; return 1; }
wait_port "$OURS_PORT"; wait_port "$AXUM_PORT"; wait_port "$NGINX_PORT"
# OpenSSL's responder exits on a malformed request (a bare GET /): wait for its log line instead.
for _ in $(seq 1 100); do grep -q 'waiting for OCSP client' "$work/openssl.log" && break; sleep 0.1; done

# Warm up: every request once through our responder (unknown serials get signed once and cached).
while read -r _ file get; do
  curl -s -o /dev/null "http://127.0.0.1:$OURS_PORT/ocsp/$get"
  curl -s -o /dev/null --data-binary @"$file" -H 'Content-Type: application/ocsp-request' "http://127.0.0.1:$OPENSSL_PORT/"
done <"$work/requests.txt"

# Sanity: both responders agree on the status of every request in the mix.
disagree=0
while read -r kind file _; do
  curl -s -o "$work/a.der" --data-binary @"$file" -H 'Content-Type: application/ocsp-request' "http://127.0.0.1:$OURS_PORT/ocsp"
  curl -s -o "$work/b.der" --data-binary @"$file" -H 'Content-Type: application/ocsp-request' "http://127.0.0.1:$OPENSSL_PORT/"
  for r in a b; do
    st="$(openssl ocsp -respin "$work/$r.der" -resp_text -noverify 2>/dev/null | awk '/Cert Status:/ {print $3; exit}')"
    [ "$st" = "$kind" ] || { echo "status mismatch ($r): $kind vs '$st' for $file" >&2; disagree=1; }
  done
done <"$work/requests.txt"
[ "$disagree" = 0 ] || exit 1

run() { # name port method post-path get-prefix
  local name="$1" port="$2" method="$3" line
  line="$(METHOD="$method" POST_PATH="$4" GET_PREFIX="$5" REQUESTS="$work/requests.txt" "${cli[@]}" wrk -t"$threads" -c"$conns" -d"$dur" --latency \
    -s bench/ocsp.lua "http://127.0.0.1:$port" | grep '^RESULT')"
  echo "$name $method $line"
}
load() { # name port method post-path get-prefix
  local name="$1" port="$2" method="$3" line
  line="$("${cli[@]}" "$bench_status" load "http://127.0.0.1:$port" "$method" "$work/requests.txt" "$conns" "$dur" "$4" "$5" | grep '^RESULT')"
  echo "$name $method $line"
}

results="$work/results.txt"
for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds" >&2
  run ours "$OURS_PORT" GET /ocsp /ocsp/
  run ours "$OURS_PORT" POST /ocsp /ocsp/
  run axum "$AXUM_PORT" GET /ocsp /ocsp/
  run axum "$AXUM_PORT" POST /ocsp /ocsp/
  run nginx-static "$NGINX_PORT" GET /ocsp /ocsp/
  # wrk cannot drive OpenSSL's responder: it accepts wrk's probe connection, which closes at
  # once, and spins on it forever. The Rust load generator drives it (and ours, to compare
  # like with like). OpenSSL's responder answers POST at / and GET at /{base64}, HTTP/1.0
  # without keep-alive.
  load ours-loadgen "$OURS_PORT" GET /ocsp /ocsp/
  load ours-loadgen "$OURS_PORT" POST /ocsp /ocsp/
  load openssl "$OPENSSL_PORT" GET / /
  load openssl "$OPENSSL_PORT" POST / /
done | tee "$results" >&2

# Best of the rounds (highest req/s, with that run's latencies): the cases of a round run
# back to back and rounds interleave them, so a burst of other work on the machine spoils one
# sample of a case, not the case.
val() {
  awk -v n="$1" -v m="$2" '$1==n && $2==m' "$results" | sort -t= -k2 -n -r \
    | awk -v k="$3" 'NR==1 { for (i=3;i<=NF;i++) { split($i,a,"="); if (a[1]==k) print a[2] } }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/ocsp.md}"
{
  echo "### OCSP responder ($(date -u +%Y-%m-%d), wrk -t$threads -c$conns -d$dur, keep-alive, loopback, best of $rounds rounds)"
  echo
  echo "Command: \`bench/ocsp.sh $dur $conns $certs\`. Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(openssl version | cut -d' ' -f1-2), nginx $("$nginx_bin" -v 2>&1 | sed 's|.*/||'). Placement: $([ ${#srv[@]} -gt 0 ] && echo 'each server pinned to CPU 0, each load generator to CPU 1 (taskset)' || echo 'unpinned'). Load average at start: $loadavg (other work on the machine skews absolute numbers; compare rows of one run)."
  echo "Store: $CERTS certificates (20% revoked), pre-signed at start in ${PRESIGN_MS} ms; request mix 60 good / 20 revoked / 20 unknown, SHA-1 CertIDs, no nonce; response ${RESPONSE_BYTES} B (delegated responder, certificate included)."
  echo
  echo "| Server | Method | req/s | p50 (ms) | p99 (ms) | errors |"
  echo "|---|---|---:|---:|---:|---:|"
  awk '{ print $1, $2 }' "$results" | awk '!seen[$0]++' | while read -r name method; do
    rps="$(val "$name" "$method" rps)"; p50="$(val "$name" "$method" p50_us)"; p99="$(val "$name" "$method" p99_us)"; err="$(val "$name" "$method" errors)"
    printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$method" "$rps" "$(awk -v v="$p50" 'BEGIN{printf "%.3f", v/1000}')" "$(awk -v v="$p99" 'BEGIN{printf "%.3f", v/1000}')" "$err"
  done
  echo
  echo "Rows \`ours\`, \`axum\`, \`nginx-static\`: wrk. Rows \`ours-loadgen\`, \`openssl\`: the Rust load generator (\`bench_status load\`, one thread, same connections and duration)."
  echo
  echo "Ratios (ours / peer): GET vs openssl $(ratio "$(val ours-loadgen GET rps)" "$(val openssl GET rps)"), POST vs openssl $(ratio "$(val ours-loadgen POST rps)" "$(val openssl POST rps)") (same load generator), GET vs nginx static $(ratio "$(val ours GET rps)" "$(val nginx-static GET rps)"), GET vs bare axum $(ratio "$(val ours GET rps)" "$(val axum GET rps)"), POST vs bare axum $(ratio "$(val ours POST rps)" "$(val axum POST rps)")."
  echo
  echo "Revocation: acknowledged (store durable + OCSP re-signed) in $(awk -v v="$REVOKE_ACK_US" 'BEGIN{printf "%.1f", v/1000}') ms; visible to an HTTP GET $(awk -v v="$REVOCATION_VISIBLE_US" 'BEGIN{printf "%.1f", v/1000}') ms after the call."
} | tee "$out"
