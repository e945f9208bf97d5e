#!/usr/bin/env bash
# Issuance per second from ca-core against SoftHSM (ECDSA P-256, 1 and 2 threads), side by side
# with the raw PKCS#11 signing rate of the same token in the same run, measured two ways: with
# the token key object, and with a session copy of it made in the HSM (what the signer uses).
# Usage: bench/issuance.sh [SECONDS_PER_CASE]   (writes bench/results/issuance.md)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
target="${CARGO_TARGET_DIR:-target}"
mkdir -p bench/results
cargo build --release --locked -p ca-core --example bench_issuance >&2
out=bench/results/issuance.md
{
  echo "### Issuance vs raw PKCS#11 signing ($(date -u +%Y-%m-%d\ %H:%M\ UTC), ${secs}s per case)"
  echo
  echo "Command: \`bench/issuance.sh ${secs}\` at $(git rev-parse --short HEAD). Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), SoftHSM $(dpkg-query -W -f='${Version}' softhsm2 2>/dev/null || echo '?'). Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "$target/release/examples/bench_issuance" "$secs"
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$out"
