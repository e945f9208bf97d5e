#!/usr/bin/env bash
# Certificates per second through the HTTPS API: enrollment with one-time tokens minted before
# the timed part, then renewal over mTLS (chains of renewals, each over a fresh mTLS connection
# with the newest generation, as lineages require); P-256 CSRs generated before the timed part; 16
# keep-alive connections; the dev CA (issuing and OCSP keys in SoftHSM, delegated OCSP response
# pre-signed at issuance, durable sled store on disk, audit log). Load generator:
# ca-server/examples/bench_api.rs (same machine; its own CPU share is reported).
#
# The server runs `ca-server dev` on a fresh directory with the enroll/renew/admin rate limits
# raised in that directory's config.toml only (defaults: 100/s per IP, 2/s per certificate,
# 20/s per admin): a benchmark of the issuance path, not of the limiter.
#
# Usage: bench/api.sh [ENROLLMENTS] [RENEWALS] [CONNECTIONS]   (defaults 20000 20000 16)
# BENCH_HSM_SESSIONS=N sets the HSM session pool size (default: one per core, at least 2).
# Writes bench/results/api.md (BENCH_OUT=FILE: there instead). BENCH_DIR picks where the store lives (default /var/tmp: a disk,
# so that durability costs what it costs in production).
set -euo pipefail
cd "$(dirname "$0")/.."
n_enroll="${1:-20000}"; n_renew="${2:-20000}"; conns="${3:-16}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-server --bin ca-server --example bench_api >&2
bin="${CA_SERVER_BIN:-$target/release/ca-server}"   # CA_SERVER_BIN: compare another build
gen="$target/release/examples/bench_api"

dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/ca-bench-api.XXXXXX")"
log="$dir.log"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir" "$log"
}
trap cleanup EXIT

start_server() {
  "$bin" dev --data "$dir" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    [ -f "$dir/dev.env" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "api.sh: ca-server dev exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "api.sh: ca-server dev did not come up" >&2; exit 1
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

# 1. A dev CA (key ceremonies rehearsed on SoftHSM), then stop it.
start_server
stop_server
# 2. Raise the rate limits for this run only.
awk '
  /^\[/ { sec = $0 }
  (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^per_second =/ { $0 = "per_second = 1000000" }
  (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^burst =/ { $0 = "burst = 1000000" }
  { print }
' "$dir/config.toml" >"$dir/config.toml.new"
mv "$dir/config.toml.new" "$dir/config.toml"
if [ -n "${BENCH_HSM_SESSIONS:-}" ]; then  # experiment: HSM session pool size
  sed -i "/^\[hsm\]/a sessions = $BENCH_HSM_SESSIONS" "$dir/config.toml"
fi
grep -A2 '^\[limits\.' "$dir/config.toml" >&2
# 3. Serve it again and load it.
start_server
# shellcheck disable=SC1091
. "$dir/dev.env"

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/api.md}"
{
  echo "### Certificates per second through the HTTPS API ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/api.sh $n_enroll $n_renew $conns\` at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server || echo '+changes'). Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), SoftHSM $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null || echo '?'), store on $(df -T "$dir" | awk 'NR==2 {print $2}'). Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "$gen" --url "$CA_URL" --root "$CA_ROOT" --admin-cert "$CA_ADMIN_CERT" --admin-key "$CA_ADMIN_KEY" \
    --enroll "$n_enroll" --renew "$n_renew" --conns "$conns" --server-pid "$pid"
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$out"
