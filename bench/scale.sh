#!/usr/bin/env bash
# Growth: what a certificate costs as one data directory grows (issue 17). One `ca-server dev`
# CA (sled, SoftHSM, durable store on disk) is grown through the HTTPS API, step by step, to
# each size given; at each step the script measures, on the same directory:
#
# - enroll certificates/s (the step's enrollments) and revoke/s with p50/p99 (SCALE_REVOKE
#   revocations per step through the admin API, 16 connections): bench_api;
# - store bytes on disk per certificate issued (`du` of the store once stopped);
# - the full CRL's size (`/crl`), and the number of revoked certificates;
# - a restart after kill -9: seconds until serving (`dev.env` written, both listeners bound) and until the
#   status listener's /readyz; the server's RSS right after, and once the background load of
#   stored OCSP responses has finished (`ca_ocsp_cache_entries` stable; its value is a column);
# - OCSP GET requests/s for a random mix (SCALE_RANDOM distinct certificates, cycled;
#   SCALE_RANDOM=all: as many uniformly random draws over every valid certificate; the 16
#   connections start spread over the list) and for a hot set (100
#   certificates), 16 connections, SCALE_OCSP_SECONDS each, with the answer cache's hit rate;
#   then the RSS again.
#
# The answer cache is bounded at SCALE_CACHE answers (default 20000: at 100k certificates that
# is the ratio of the 200k default to 1M certificates), so the random mix misses as it would
# at a million.
#
# With BASE_BIN=<another ca-server> a second directory is grown with that build in the same
# run, step by step (each build keeps its own store format; its config has no
# `cache_max_entries`, which older builds do not know): previous build and this one, side by
# side. SCALE_BASE_MAX=N: that build grows only up to N certificates (the sizes past it are
# measured for this build alone). SCALE_BASE_CACHE=N bounds that build's answer cache too
# (builds that know `cache_max_entries`), so that both take the same miss path.
#
# Usage: bench/scale.sh [SIZE...]   (default: 10000 100000; e.g. 10000 100000 1000000)
# Env: SCALE_REVOKE (default 2000 per step), SCALE_RANDOM (20000, or all), SCALE_CACHE (20000),
#      SCALE_BASE_MAX (none), SCALE_BASE_CACHE (none), SCALE_KEEP (set: keep the data directories),
#      SCALE_OCSP_SECONDS (5), BENCH_DIR (default /var/tmp), BENCH_OUT (default
#      bench/results/scale.md). Needs curl, python3 and about 7 KB of disk per certificate.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in --help|-h) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(10000 100000)
revoke="${SCALE_REVOKE:-2000}"
random="${SCALE_RANDOM:-20000}"
cache="${SCALE_CACHE:-20000}"
secs="${SCALE_OCSP_SECONDS:-5}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-server --bin ca-server --example bench_api --example bench_status >&2
bin="$target/release/ca-server"
gen="$target/release/examples/bench_api"
load="$target/release/examples/bench_status"
dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/ca-bench-scale.XXXXXX")"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ -n "${SCALE_KEEP:-}" ]; then echo "scale.sh: kept $dir" >&2; return; fi
  rm -rf "$dir" "$dir.work" "$dir.base" "$dir.base.work"
}
trap cleanup EXIT

since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { print a - b }'; }
rss_mb() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
metric() { curl -fsS "$CA_STATUS_URL/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
# start [BIN DIR]: this build on the bench directory by default.
start() {
  local b=${1:-$bin} d=${2:-$dir}
  rm -f "$d/dev.env"
  t0=$(date +%s.%N)
  "$b" dev --data "$d" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$dir.work/server.log" 2>&1 &
  pid=$!
  until [ -f "$d/dev.env" ]; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$dir.work/server.log" >&2; echo "scale.sh: ca-server exited" >&2; exit 1; }
    sleep 0.02
  done
  t_serving=$(since "$t0")
  # shellcheck disable=SC1091
  . "$d/dev.env"
  until curl -fsS -o /dev/null "$CA_STATUS_URL/readyz"; do sleep 0.02; done
  t_ready=$(since "$t0")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
# crash: kill -9, no shutdown: the next start recovers whatever the store had not checkpointed.
crash() { kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
# The row of PHASE in bench_api's table: prints "rate p50 p99".
phase() { awk -F'|' -v p=" $1 " '$2 == p {gsub(/[ *]/, "", $6); gsub(/ /, "", $7); gsub(/ /, "", $8); print $6, $7, $8}' "$2"; }
ocsp() {
  local before_h before_m out
  before_h=$(metric ca_ocsp_cache_hits_total); before_m=$(metric ca_ocsp_cache_misses_total)
  before_h=${before_h:-0}; before_m=${before_m:-0}
  out=$("$load" load "$CA_STATUS_URL" GET "$1" 16 "$secs" /ocsp /ocsp/ | awk '/^RESULT/ {sub(/rps=/, "", $2); print $2}')
  local h m
  h=$(metric ca_ocsp_cache_hits_total); m=$(metric ca_ocsp_cache_misses_total)
  h=${h:-0}; m=${m:-0}
  awk -v r="$out" -v h="$((${h%.*} - ${before_h%.*}))" -v m="$((${m%.*} - ${before_m%.*}))" \
    'BEGIN { printf "%s %s\n", r, (h + m > 0 ? sprintf("%.0f%%", 100 * h / (h + m)) : "-") }'
}

# prepare BIN DIR CACHE: a dev CA in DIR without rate limits, its answer cache bounded at CACHE
# (none: the build's default; older builds do not know the setting).
prepare() {
  local b=$1 d=$2
  mkdir -p "$d.work"
  start "$b" "$d"; stop
  awk '
    /^\[/ { sec = $0 }
    (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^per_second =/ { $0 = "per_second = 1000000" }
    (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^burst =/ { $0 = "burst = 1000000" }
    { print }
  ' "$d/config.toml" >"$d/config.toml.new"
  mv "$d/config.toml.new" "$d/config.toml"
  [ "$3" = none ] && return
  if grep -q '^\[ocsp\]' "$d/config.toml"; then
    sed -i "/^\[ocsp\]/a cache_max_entries = $3" "$d/config.toml"
  else
    printf '\n[ocsp]\ncache_max_entries = %s\n' "$3" >>"$d/config.toml"
  fi
}

# step NAME BIN DIR N: grow DIR to N certificates with BIN (from $have), revoke, then restart,
# RSS and OCSP; appends a table row.
step() {
  local name=$1 b=$2 d=$3 n=$4 w="$3.work"
  start "$b" "$d"
  echo "scale.sh: $name: growing to $n certificates (+$((n - have))), revoking $revoke" >&2
  "$gen" --url "$CA_URL" --root "$CA_ROOT" --admin-cert "$CA_ADMIN_CERT" --admin-key "$CA_ADMIN_KEY" \
    --enroll "$((n - have))" --renew 0 --revoke "$revoke" --conns 16 --server-pid "$pid" >"$w/api.md"
  read -r enroll_rate _ _ < <(phase enroll "$w/api.md")
  read -r revoke_rate revoke_p50 revoke_p99 < <(phase revoke "$w/api.md")
  sleep 2 # the CRL task rebuilds after the last revocations
  crl_bytes=$(curl -fsS "$CA_STATUS_URL/crl" | wc -c)
  curl -fsS -o "$w/issuer.crt" "$CA_STATUS_URL/ca.crt"
  "$b" certs export --json --status valid >"$w/certs.ndjson"
  python3 - "$w" "$random" <<'EOF'
import json, random, sys
work = sys.argv[1]
serials = [json.loads(l)["serial"].replace(":", "") for l in open(f"{work}/certs.ndjson")]
random.seed(17)
if sys.argv[2] == "all":
    mix = random.choices(serials, k=len(serials))
else:
    mix = random.sample(serials, min(int(sys.argv[2]), len(serials)))
open(f"{work}/random.serials", "w").write("\n".join(mix) + "\n")
open(f"{work}/hot.serials", "w").write("\n".join(serials[-100:]) + "\n")
EOF
  "$load" requests "$w/issuer.crt" "$w/random.serials" "$w/random.txt"
  "$load" requests "$w/issuer.crt" "$w/hot.serials" "$w/hot.txt"
  # The restart measured below follows a kill -9 (the worse case: a clean stop checkpoints the
  # store on its way out).
  crash
  store_bytes=$(du -sb "$d/store" | awk '{print $1}')

  start "$b" "$d"
  rss_ready=$(rss_mb)
  prev=-1
  # Loaded: ca_ocsp_cache_loaded is 1. Builds without that metric: when the answers in memory
  # stop changing (older builds load before serving).
  if curl -fsS "$CA_STATUS_URL/metrics" | grep -q '^ca_ocsp_cache_loaded '; then
    until [ "$(metric ca_ocsp_cache_loaded)" = 1 ]; do sleep 0.2; done
  else
    while e=$(metric ca_ocsp_cache_entries); [ "${e:-none}" != "$prev" ]; do prev=${e:-none}; sleep 1; done
  fi
  t_loaded=$(since "$t0")
  rss_loaded=$(rss_mb)
  # Answers in memory when the OCSP runs start (older builds without the metric: -).
  in_memory=$(metric ca_ocsp_cache_entries); in_memory=${in_memory:--}
  read -r rps_random hit_random < <(ocsp "$w/random.txt")
  read -r rps_hot hit_hot < <(ocsp "$w/hot.txt")
  rss_after=$(rss_mb)
  stop
  rows+=("$(printf '| %s | %s | %s | %.0f | %s | %s | %s | %s / %s | %.2f / %.2f / %.0f | %s / %s / %s | %s | %s (%s) | %s (%s) |' \
    "$name" "$n" "$((revoked + revoke))" "$(awk -v b="$store_bytes" -v n="$n" 'BEGIN {print b / n}')" "$crl_bytes" \
    "$enroll_rate" "$revoke_rate" "$revoke_p50" "$revoke_p99" \
    "$t_serving" "$t_ready" "$t_loaded" "$rss_ready" "$rss_loaded" "$rss_after" \
    "${in_memory%.*}" "$rps_random" "$hit_random" "$rps_hot" "$hit_hot")")
}

prepare "$bin" "$dir" "$cache"
[ -z "${BASE_BIN:-}" ] || prepare "$BASE_BIN" "$dir.base" "${SCALE_BASE_CACHE:-none}"
have=0; revoked=0
rows=()
for n in "${sizes[@]}"; do
  [ "$n" -gt "$have" ] || { echo "scale.sh: sizes must grow ($n after $have)" >&2; exit 2; }
  free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
  builds=1; [ -z "${BASE_BIN:-}" ] || [ "$n" -gt "${SCALE_BASE_MAX:-$n}" ] || builds=2
  if [ $(( (n - have) * 8 * builds )) -gt "$free_kb" ]; then
    echo "scale.sh: stopping before $n certificates: $((free_kb / 1024)) MB free on $(df -P "$dir" | awk 'NR == 2 {print $6}') (about 7 KB each)" >&2
    rows+=("| | $n | not reached: the disk holds about $((free_kb / 8 / builds)) more certificates per build |||||||||||")
    break
  fi
  # SCALE_BASE_MAX: the other build stops growing there (a long run measures this build alone
  # past it).
  [ -z "${BASE_BIN:-}" ] || [ "$n" -gt "${SCALE_BASE_MAX:-$n}" ] || step "previous build" "$BASE_BIN" "$dir.base" "$n"
  step "this build" "$bin" "$dir" "$n"
  have=$n; revoked=$((revoked + revoke))
done

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/scale.md}"
{
  echo "### Growth of one data directory ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/scale.sh ${sizes[*]}\` at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server || echo '+changes'); SCALE_REVOKE=$revoke SCALE_RANDOM=$random SCALE_CACHE=$cache${BASE_BIN:+ SCALE_BASE_CACHE=${SCALE_BASE_CACHE:-none}} SCALE_OCSP_SECONDS=$secs. Machine: $(nproc) cores, $(uname -sr), sled store on $(df -T "$dir" | awk 'NR==2 {print $2}'). Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| build | certificates | revoked | store bytes per certificate | full CRL bytes | enroll/s | revoke/s | revoke p50 / p99 ms | serving / ready / loaded (s) | RSS MB at ready / loaded / after OCSP | answers in memory before OCSP | OCSP req/s random (cache hit rate) | OCSP req/s hot (hit rate) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$out"
