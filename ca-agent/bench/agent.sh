#!/usr/bin/env bash
# ca-agent footprint: resident memory of the idle daemon, and CPU (user+sys) and peak RSS of
# one renewal pass (`ca-agent renew --force`: key generation, mTLS to the CA, verification,
# atomic install) per key type, against a local `ca-server dev` on ephemeral ports.
# Usage: ca-agent/bench/agent.sh [RENEWALS_PER_KEY_TYPE]   (prints Markdown for BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-10}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked -p ca-agent >&2
cargo build --locked -p ca-server >&2
agent="$target/release/ca-agent"
server="$target/debug/ca-server"
work="$(mktemp -d)"
cleanup() { [ -n "${srv:-}" ] && kill "$srv" 2>/dev/null; [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
timeout 900 "$server" dev --data "$work/ca" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
srv=$!
for _ in $(seq 1 120); do [ -s "$work/ca/dev.env" ] && break; sleep 0.5; done
# shellcheck disable=SC1091
. "$work/ca/dev.env"

echo "### ca-agent footprint ($(date -u +%Y-%m-%d), $n renewals per key type)"
echo
echo "Command: \`ca-agent/bench/agent.sh $n\`. Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr). Release build of the agent; CA is a debug \`ca-server dev\` on loopback."
echo
echo "| key type | CPU per renewal pass (user+sys, mean) | wall per pass (mean) | peak RSS of a pass |"
echo "|---|---|---|---|"
for kt in p256 p384 ed25519 rsa2048; do
  d="$work/$kt"; mkdir -p "$d/tls"
  cat >"$d/agent.toml" <<TOML
server = "$CA_URL"
root_fingerprint = "$CA_FINGERPRINT"
state_dir = "$d/state"
[[certificate]]
name = "svc"
cert = "$d/tls/svc.crt"
key = "$d/tls/svc.key"
fullchain = "$d/tls/fullchain.pem"
key_type = "$kt"
TOML
  "$server" token create --cn "bench-$kt.test" --san "dns:bench-$kt.test" --profile mtls >"$d/token" 2>/dev/null
  "$agent" enroll --config "$d/agent.toml" --token-file "$d/token" >/dev/null 2>&1
  : >"$d/times"
  for _ in $(seq 1 "$n"); do
    /usr/bin/time -a -o "$d/times" -f "%U %S %e %M" "$agent" renew --force --config "$d/agent.toml" >/dev/null 2>&1
    sleep 0.6  # stay under the CA's per-certificate renewal rate limit
  done
  awk -v kt="$kt" '{cpu += $1 + $2; wall += $3; if ($4 > rss) rss = $4}
    END {c = 1000*cpu/NR; cs = (c < 10) ? "< 10 ms (time(1) resolution)" : sprintf("%.0f ms", c);
         printf "| %s | %s | %.0f ms | %.1f MiB |\n", kt, cs, 1000*wall/NR, rss/1024}' "$d/times"
done

# Idle daemon: four certificates managed, none due.
cat "$work/p256/agent.toml" >"$work/daemon.toml"
for kt in p384 ed25519 rsa2048; do sed -n '/^\[\[certificate\]\]/,$p' "$work/$kt/agent.toml" | sed "s/^name = \"svc\"/name = \"svc-$kt\"/" >>"$work/daemon.toml"; done
"$agent" run --config "$work/daemon.toml" >"$work/daemon.log" 2>&1 &
daemon=$!
sleep 10
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$daemon/status")
ticks_before=$(awk '{print $14 + $15}' "/proc/$daemon/stat")
sleep 20
ticks_after=$(awk '{print $14 + $15}' "/proc/$daemon/stat")
echo
awk -v kb="$rss_kb" -v ms="$(( (ticks_after - ticks_before) * 1000 / $(getconf CLK_TCK) ))" 'BEGIN {
  printf "Idle daemon managing 4 certificates (none due): resident memory %.1f MiB; CPU over 20 s idle: %d ms.\n", kb/1024, ms }'
