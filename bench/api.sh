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
# Usage: bench/api.sh [--store sled|postgres] [--nodes 1|2] [--pin] [ENROLLMENTS] [RENEWALS] [CONNECTIONS]
#        (defaults: sled, 1 node, 20000 20000 16)
# --store postgres: the store is a throwaway PostgreSQL cluster of the distribution's (initdb and
#   pg_ctl in the bench directory, 127.0.0.1, run as user postgres when root; synchronous_commit on,
#   as the store requires), started and removed by this script.
# --nodes 2 (PostgreSQL only): two `ca-server dev` processes on the same directory, HSM token and
#   database; the load generator spreads connections and renewal chains over both, and reports
#   their summed CPU. With PostgreSQL the table adds the database's CPU (its processes, by name)
#   and the server's and database's CPU per certificate: the cost, whatever else runs.
# --pin (2+ cores, taskset): the CA node on CPU 0; the load generator and PostgreSQL on CPU 1.
#   Measures what one core of CA node does when the database runs elsewhere (as in production)
#   rather than on the node's own cores; use it for both stores in a comparison.
# BENCH_HSM_SESSIONS=N sets the HSM session pool size (default: one per core, at least 2).
# BENCH_PG_POOL=N sets the node's database pool size; BENCH_PG_STATS=1 prints where the
# database's time went (bench/lib/pg.sh).
# Writes bench/results/api.md (BENCH_OUT=FILE: there instead). BENCH_DIR picks where the store lives (default /var/tmp: a disk,
# so that durability costs what it costs in production).
set -euo pipefail
cd "$(dirname "$0")/.."
store=sled; nodes=1; pin=0
while [ $# -gt 0 ]; do
  case "$1" in
    --store) store="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --pin) pin=1; shift ;;
    --help|-h) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --*) echo "api.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
case "$store:$nodes" in
  sled:1|postgres:1|postgres:2) ;;
  *) echo "api.sh: --store $store --nodes $nodes is not a supported mode (sled runs one node; postgres one or two)" >&2; exit 2 ;;
esac
n_enroll="${1:-20000}"; n_renew="${2:-20000}"; conns="${3:-16}"
srv_pin=(); other_pin=()
if [ "$pin" = 1 ]; then
  command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] || { echo "api.sh: --pin needs taskset and 2 cores" >&2; exit 2; }
  srv_pin=(taskset -c 0); other_pin=(taskset -c 1)
fi
export BENCH_PG_PIN="${other_pin[*]}"   # bench/lib/pg.sh starts PostgreSQL with it
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-server --bin ca-server --example bench_api >&2
bin="${CA_SERVER_BIN:-$target/release/ca-server}"   # CA_SERVER_BIN: compare another build
gen="$target/release/examples/bench_api"

dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/ca-bench-api.XXXXXX")"
log="$dir.log"
pid=""; pids=(); pgdata=""; db_comm=""
cleanup() {
  for p in $pid "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  stop_postgres
  rm -rf "$dir" "$log"
}
trap cleanup EXIT

start_server() {
  rm -f "$dir/dev.env"
  "${srv_pin[@]}" "$bin" dev --data "$dir" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 300); do
    [ -f "$dir/dev.env" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "api.sh: ca-server dev exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "api.sh: ca-server dev did not come up" >&2; exit 1
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

# shellcheck source=bench/lib/pg.sh
. bench/lib/pg.sh

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
# 3. The store: sled in the directory, or PostgreSQL.
if [ "$store" = postgres ]; then
  start_postgres "$dir"
  db_comm=postgres
  use_postgres_store "$dir/config.toml"
  rm -rf "$dir/admin"   # issued into the sled store: the first node issues one into PostgreSQL
fi
# 4. Serve it again (on every node) and load it.
urls=()
for _ in $(seq 1 "$nodes"); do
  start_server
  # shellcheck disable=SC1091
  . "$dir/dev.env"
  urls+=("$CA_URL"); pids+=("$pid"); pid=""
done
url_list="$(IFS=,; echo "${urls[*]}")"; pid_list="$(IFS=,; echo "${pids[*]}")"

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/api.md}"
{
  echo "### Certificates per second through the HTTPS API ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/api.sh --store $store --nodes $nodes$([ "$pin" = 1 ] && echo ' --pin') $n_enroll $n_renew $conns\` at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server || echo '+changes'). Machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), SoftHSM $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null || echo '?'), store on $(df -T "$dir" | awk 'NR==2 {print $2}'). Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "${other_pin[@]}" "$gen" --url "$url_list" --root "$CA_ROOT" --admin-cert "$CA_ADMIN_CERT" --admin-key "$CA_ADMIN_KEY" \
    --enroll "$n_enroll" --renew "$n_renew" --conns "$conns" --server-pid "$pid_list" \
    ${db_comm:+--db-comm "$db_comm"}
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$out"
