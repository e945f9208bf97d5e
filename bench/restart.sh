#!/usr/bin/env bash
# Time to ready after an outage longer than the OCSP responses' validity (issue 17's first
# finding: a restart re-signed every due response, one at a time, before serving).
#
# Grows a `ca-server dev` CA (sled, SoftHSM) to CERTS enrolled certificates with `[ocsp]
# validity = "1m"`, stops it, waits until every stored response has expired, then starts it
# again and reports: seconds until it is serving (`dev.env` written: both listeners bound),
# until the status listener's `/readyz` answers 200, and until the re-sign backlog
# (`ca_ocsp_resign_backlog` on `/metrics`) is back to 0; and the server's CPU seconds until
# then. With BASE_BIN=<another ca-server> the same restart is timed on a copy of the same
# directory with that build too (before/after in one run).
#
# Usage: bench/restart.sh [CERTS]   (default 20000)
# Writes bench/results/restart.md (BENCH_OUT=FILE: there instead). BENCH_DIR: where the data
# lives (default /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in --help|-h) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
certs="${1:-20000}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-server --bin ca-server --example bench_api >&2
bin="${CA_SERVER_BIN:-$target/release/ca-server}"
gen="$target/release/examples/bench_api"
dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/ca-bench-restart.XXXXXX")"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir" "$dir.base"
}
trap cleanup EXIT

# Start BIN on DIR; sets pid and t_serving (seconds from exec to dev.env).
start() {
  local b=$1 d=$2
  rm -f "$d/dev.env"
  t0=$(date +%s.%N)
  "$b" dev --data "$d" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$d.log" 2>&1 &
  pid=$!
  until [ -f "$d/dev.env" ]; do
    kill -0 "$pid" 2>/dev/null || { tail -20 "$d.log" >&2; echo "restart.sh: ca-server exited" >&2; exit 1; }
    sleep 0.05
  done
  t_serving=$(since "$t0")
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
since() { awk -v a="$(date +%s.%N)" -v b="$1" 'BEGIN { print a - b }'; }
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$pid/stat"; }
backlog() { curl -fsS "$CA_STATUS_URL/metrics" | awk '$1 == "ca_ocsp_resign_backlog" {print $2}'; }

# One timed restart of BIN on DIR (every response expired); prints a table row.
timed_restart() {
  local name=$1 b=$2 d=$3
  start "$b" "$d"
  # shellcheck disable=SC1091
  . "$d/dev.env"
  until curl -fsS -o /dev/null "$CA_STATUS_URL/readyz"; do sleep 0.02; done
  local t_ready; t_ready=$(since "$t0")
  local b0 n
  b0=$(backlog)
  while n=$(backlog); [ "${n:-0}" != 0 ]; do sleep 0.05; done
  local t_drained; t_drained=$(since "$t0")
  printf '| %s | %.2f | %.2f | %s | %.2f | %s |\n' "$name" "$t_serving" "$t_ready" "${b0:-?}" "$t_drained" "$(cpu)"
  stop
}

# 1. A dev CA with short-lived OCSP responses and no rate limits, grown to CERTS.
start "$bin" "$dir"; stop
awk '
  /^\[/ { sec = $0 }
  (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^per_second =/ { $0 = "per_second = 1000000" }
  (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^burst =/ { $0 = "burst = 1000000" }
  { print }
' "$dir/config.toml" >"$dir/config.toml.new"
mv "$dir/config.toml.new" "$dir/config.toml"
if grep -q '^\[ocsp\]' "$dir/config.toml"; then
  sed -i '/^\[ocsp\]/a validity = "1m"' "$dir/config.toml"
else
  printf '\n[ocsp]\nvalidity = "1m"\n' >>"$dir/config.toml"
fi
start "$bin" "$dir"
# shellcheck disable=SC1091
. "$dir/dev.env"
echo "growing the CA to $certs certificates" >&2
"$gen" --url "$CA_URL" --root "$CA_ROOT" --admin-cert "$CA_ADMIN_CERT" --admin-key "$CA_ADMIN_KEY" \
  --enroll "$certs" --renew 0 --conns 16 >/dev/null
stop
[ -n "${BASE_BIN:-}" ] && cp -a "$dir" "$dir.base"
echo "waiting 65 s: every response expires" >&2
sleep 65

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/restart.md}"
{
  echo "### Restart after every OCSP response expired ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/restart.sh $certs\` at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server || echo '+changes'). Machine: $(nproc) cores, $(uname -sr), SoftHSM $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null || echo '?'), sled store on $(df -T "$dir" | awk 'NR==2 {print $2}'). Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "| build | serving (s) | status /readyz 200 (s) | re-sign backlog at ready | backlog 0 (s) | server CPU s until then |"
  echo "|---|---|---|---|---|---|"
  timed_restart "this build" "$bin" "$dir"
  if [ -n "${BASE_BIN:-}" ]; then
    timed_restart "BASE_BIN" "$BASE_BIN" "$dir.base"
  fi
} | tee "$out"
