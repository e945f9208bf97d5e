#!/usr/bin/env bash
# Restart cost on a grown data directory, two builds side by side on the same store: each round
# starts a build on it, measures seconds until serving (`dev.env` written) and until /readyz,
# the seconds until the background work after start is over (the process's CPU below 5% for a
# second: the OCSP load, whatever the build does), RSS at ready / then / after the OCSP runs,
# OCSP GET req/s for the directory's random and hot request lists (16 connections,
# SCALE_OCSP_SECONDS each) with the answer cache's hit rate, then kills it with kill -9, so
# that the next start recovers whatever the store had not checkpointed. Builds alternate,
# ROUNDS rounds each.
#
# Usage: BASE_BIN=<other ca-server> bench/reopen.sh DIR [ROUNDS]
#   DIR: a data directory kept by `SCALE_KEEP=1 bench/scale.sh ...` (DIR.work holds its
#   request lists). Writes bench/results/reopen.md (BENCH_OUT=FILE: there instead).
# Env: BASE_BIN (none: this build only), SCALE_OCSP_SECONDS (5), CPUS (taskset list for the
#   server, default all).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in --help|-h) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
dir="${1:?usage: bench/reopen.sh DIR [ROUNDS]}"
rounds="${2:-2}"
secs="${SCALE_OCSP_SECONDS:-5}"
[ -f "$dir.work/random.txt" ] || { echo "reopen.sh: $dir.work/random.txt missing (grow DIR with SCALE_KEEP=1 bench/scale.sh)" >&2; exit 2; }
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-server --bin ca-server --example bench_status >&2
bin="$target/release/ca-server"
load="$target/release/examples/bench_status"
pid=""
trap '[ -z "$pid" ] || { kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; } || true' EXIT

since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { print a - b }'; }
rss_mb() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
metric() { curl -fsS "$CA_STATUS_URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
ocsp() {
  local before_h before_m out h m
  before_h=$(metric ca_ocsp_cache_hits_total); before_m=$(metric ca_ocsp_cache_misses_total)
  out=$("$load" load "$CA_STATUS_URL" GET "$1" 16 "$secs" /ocsp /ocsp/ | awk '/^RESULT/ {sub(/rps=/, "", $2); print $2}')
  h=$(metric ca_ocsp_cache_hits_total); m=$(metric ca_ocsp_cache_misses_total)
  awk -v r="$out" -v h="$(( ${h%.*} - ${before_h%.*} ))" -v m="$(( ${m%.*} - ${before_m%.*} ))" \
    'BEGIN { printf "%s %s\n", r, (h + m > 0 ? sprintf("%.0f%%", 100 * h / (h + m)) : "-") }'
}

rows=()
round() {
  local name=$1 b=$2
  rm -f "$dir/dev.env"
  local t0; t0=$(date +%s.%N)
  ${CPUS:+taskset -c "$CPUS"} "$b" dev --data "$dir" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$dir.work/restart.log" 2>&1 &
  pid=$!
  until [ -f "$dir/dev.env" ]; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$dir.work/restart.log" >&2; exit 1; }
    sleep 0.02
  done
  local t_serving; t_serving=$(since "$t0")
  # shellcheck disable=SC1091
  . "$dir/dev.env"
  until curl -fsS -o /dev/null "$CA_STATUS_URL/readyz"; do sleep 0.02; done
  local t_ready rss_ready
  t_ready=$(since "$t0")
  rss_ready=$(rss_mb)
  # Settled: under 5 ticks (50 ms of CPU) in a second.
  local a b; a=$(ticks); sleep 1; b=$(ticks)
  while [ $((b - a)) -ge 5 ]; do a=$b; sleep 1; b=$(ticks); done
  local t_settled cpu rss_settled entries
  t_settled=$(since "$t0")
  cpu=$(awk -v t="$b" 'BEGIN {printf "%.1f", t / 100}')
  rss_settled=$(rss_mb)
  entries=$(metric ca_ocsp_cache_entries)
  local rps_random hit_random rps_hot hit_hot
  read -r rps_random hit_random < <(ocsp "$dir.work/random.txt")
  read -r rps_hot hit_hot < <(ocsp "$dir.work/hot.txt")
  local rss_after; rss_after=$(rss_mb)
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  rows+=("$(printf '| %s | %.2f / %.2f | %.0f | %s | %s / %s / %s | %s | %s (%s) | %s (%s) |' \
    "$name" "$t_serving" "$t_ready" "$t_settled" "$cpu" "$rss_ready" "$rss_settled" "$rss_after" \
    "${entries%.*}" "$rps_random" "$hit_random" "$rps_hot" "$hit_hot")")
  echo "reopen.sh: ${rows[-1]}" >&2
}

for _ in $(seq 1 "$rounds"); do
  [ -z "${BASE_BIN:-}" ] || round "previous build" "$BASE_BIN"
  round "this build" "$bin"
done

certs=$(wc -l <"$dir.work/certs.ndjson")
out="${BENCH_OUT:-bench/results/reopen.md}"
{
  echo "### Restart on one grown data directory ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/reopen.sh DIR $rounds\` at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server vendor || echo '+changes'); DIR grown by \`bench/scale.sh\` to $certs valid certificates (store $(du -sh "$dir/store" | cut -f1)); each start follows a kill -9. SCALE_OCSP_SECONDS=$secs. Machine: $(nproc) cores, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| build | serving / ready (s) | settled (s) | CPU s until settled | RSS MB at ready / settled / after OCSP | answers in memory | OCSP req/s random (hit rate) | OCSP req/s hot (hit rate) |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$out"
