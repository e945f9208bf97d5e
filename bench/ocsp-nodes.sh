#!/usr/bin/env bash
# OCSP requests per second on PostgreSQL: the stateless responder (`ca-server ocsp`, no HSM,
# answers verified from the store) side by side with a signing node's own status listener
# (`ca-server dev` on the same database), same requests, same run, rounds interleaved.
#
# A throwaway PostgreSQL cluster (bench/lib/pg.sh); a dev CA moved onto it; CERTS certificates
# issued through the API (bench_api), a fifth of them revoked (`ca-server revoke`); requests made
# with `openssl ocsp -reqout` for every serial (80% good, 20% revoked; no unknown serials: the
# stateless responder answers those `unauthorized`, the signing node signs `unknown`). wrk with
# bench/ocsp.lua, keep-alive, GET and POST. With PIN=1 (default on 2+ cores) the responders run
# on CPU 0 and wrk on CPU 1 (taskset), as bench/ocsp.sh does; PostgreSQL is idle while measured
# (both answer from memory).
#
# Usage: bench/ocsp-nodes.sh [DURATION] [CONNECTIONS] [CERTS]   (defaults 8s 16 1000)
#        ROUNDS=2; BENCH_OUT=FILE (default bench/results/ocsp-nodes.md)
set -euo pipefail
cd "$(dirname "$0")/.."
dur="${1:-8s}"; conns="${2:-16}"; certs="${3:-1000}"; rounds="${ROUNDS:-2}"
for t in wrk openssl curl python3; do command -v "$t" >/dev/null || { echo "ocsp-nodes.sh: $t is required" >&2; exit 1; }; done
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-server --bin ca-server --example bench_api >&2
bin="${CA_SERVER_BIN:-$target/release/ca-server}"
gen="$target/release/examples/bench_api"
srv=(); cli=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  srv=(taskset -c 0); cli=(taskset -c 1)
fi

dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/ca-bench-ocsp-nodes.XXXXXX")"
log="$dir.log"; pids=(); pid=""; pgdata=""
# shellcheck source=bench/lib/pg.sh
. bench/lib/pg.sh
cleanup() {
  for p in $pid "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  stop_postgres
  rm -rf "$dir" "$log"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 300); do curl -sf -o /dev/null "$1/readyz" && return 0; sleep 0.2; done; echo "ocsp-nodes.sh: $1 not ready" >&2; cat "$log" >&2; exit 1; }

# 1. A dev CA, moved onto PostgreSQL, rate limits raised for the issuance below.
start_dev() {
  rm -f "$dir/dev.env"
  "${srv[@]}" "$bin" dev --data "$dir" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do [ -f "$dir/dev.env" ] && return 0; kill -0 "$pid" || { cat "$log" >&2; exit 1; }; sleep 0.2; done
  echo "ocsp-nodes.sh: ca-server dev did not come up" >&2; exit 1
}
start_dev; kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
awk '/^\[/ { sec = $0 } (sec ~ /^\[limits\.(enroll|renew|admin)\]$/) && /^(per_second|burst) =/ { $0 = $1 " = 1000000" } { print }' \
  "$dir/config.toml" >"$dir/config.toml.new" && mv "$dir/config.toml.new" "$dir/config.toml"
start_postgres "$dir"
use_postgres_store "$dir/config.toml"
rm -rf "$dir/admin"
start_dev
# shellcheck disable=SC1091
. "$dir/dev.env"
wait_ready "$CA_STATUS_URL"

# 2. Certificates, a fifth revoked.
"$gen" --url "$CA_URL" --root "$CA_ROOT" --admin-cert "$CA_ADMIN_CERT" --admin-key "$CA_ADMIN_KEY" \
  --enroll "$certs" --renew 0 --conns 8 >/dev/null
psql_q() { as_pg "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d ca -Atc "$1"; }
psql_q "SELECT encode(serial, 'hex') FROM certs WHERE identity LIKE '%.bench.example' ORDER BY serial" >"$dir/serials.txt"
n="$(wc -l <"$dir/serials.txt")"
[ "$n" -ge "$certs" ] || { echo "ocsp-nodes.sh: only $n certificates issued" >&2; exit 1; }
awk 'NR % 5 == 0' "$dir/serials.txt" | while read -r s; do
  "$bin" revoke "$s" --reason superseded >/dev/null
done

# 3. Requests: one per serial.
mkdir -p "$dir/req"
# The issuing CA certificate ([ca] certificate, relative to the configuration file).
issuer="$dir/$(awk -F'"' '/^\[ca\]/ { f = 1 } f && /^certificate =/ { print $2; exit }' "$dir/config.toml")"
[ -f "$issuer" ] || { echo "ocsp-nodes.sh: no issuing certificate at $issuer" >&2; exit 1; }
: >"$dir/requests.txt"
i=0
while read -r s; do
  i=$((i + 1))
  kind=good; [ $((i % 5)) = 0 ] && kind=revoked
  f="$dir/req/$s.der"
  openssl ocsp -no_nonce -issuer "$issuer" -serial "0x$s" -reqout "$f" >/dev/null 2>&1
  get="$(python3 -c 'import base64,sys,urllib.parse; print(urllib.parse.quote(base64.b64encode(open(sys.argv[1],"rb").read()).decode(), safe=""))' "$f")"
  echo "$kind $f $get" >>"$dir/requests.txt"
done <"$dir/serials.txt"

# 4. The stateless responder on the same database and configuration.
OCSP_PORT="$(free_port)"
awk '/^\[listen\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip { print }' "$dir/config.toml" >"$dir/ocsp.toml"
printf '\n[listen]\napi = "127.0.0.1:0"\nstatus = "127.0.0.1:%s"\n' "$OCSP_PORT" >>"$dir/ocsp.toml"
"${srv[@]}" "$bin" ocsp --config "$dir/ocsp.toml" >>"$log" 2>&1 &
pids+=($!)
wait_ready "http://127.0.0.1:$OCSP_PORT"

# Both agree on every answer (after warm-up: each request once).
check() { # url
  local bad=0 kind file st
  while read -r kind file _; do
    curl -sf -o "$dir/a.der" --data-binary @"$file" -H 'Content-Type: application/ocsp-request' "$1/ocsp"
    st="$(openssl ocsp -respin "$dir/a.der" -resp_text -noverify 2>/dev/null | awk '/Cert Status:/ {print $3; exit}')"
    [ "$st" = "$kind" ] || { echo "status mismatch at $1: $kind vs '$st' for $file" >&2; bad=1; }
  done <"$dir/requests.txt"
  return "$bad"
}
check "$CA_STATUS_URL"
check "http://127.0.0.1:$OCSP_PORT"

run() { # name url method
  local line
  line="$(METHOD="$3" REQUESTS="$dir/requests.txt" "${cli[@]}" wrk -t1 -c"$conns" -d"$dur" --latency \
    -s bench/ocsp.lua "$2" | grep '^RESULT')"
  echo "$1 $3 $line"
}
results="$dir/results.txt"
for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds" >&2
  for m in GET POST; do
    run signing-node "$CA_STATUS_URL" "$m" | tee -a "$results" >&2
    run stateless "http://127.0.0.1:$OCSP_PORT" "$m" | tee -a "$results" >&2
  done
done

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/ocsp-nodes.md}"
{
  echo "### OCSP on PostgreSQL: stateless responder vs the signing node ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/ocsp-nodes.sh $dur $conns $certs\` (ROUNDS=$rounds, PIN=${PIN:-1}) at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server || echo '+changes'). $n certificates, every fifth revoked; wrk, $conns connections. Machine: $(nproc) cores, $(uname -sr). Best round per row."
  echo
  echo "| responder | method | req/s | p50 µs | p99 µs | errors |"
  echo "|---|---|---|---|---|---|"
  for name in signing-node stateless; do
    for m in GET POST; do
      awk -v n="$name" -v m="$m" '$1 == n && $2 == m {
        for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        if (v["rps"] + 0 > best) { best = v["rps"] + 0; p50 = v["p50_us"]; p99 = v["p99_us"]; err = v["errors"] }
      } END { printf "| %s | %s | **%d** | %s | %s | %s |\n", n, m, best, p50, p99, err }' "$results"
    done
  done
} | tee "$out"
