#!/usr/bin/env bash
# CRL build cost against the number of revoked certificates (README "CRL shards"): the full CRL,
# one shard rebuilt after a revocation in it, and the delta CRL, SoftHSM P-256 key, sled store.
# Usage: bench/crl_shards.sh [COUNT...]   (default 10000 100000; writes bench/results/crl_shards.md)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
mkdir -p bench/results
cargo build --release --locked -p ca-core --example bench_crl_shards >&2
out=bench/results/crl_shards.md
{
  echo "### CRL shards, full and delta CRL builds ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/crl_shards.sh $*\` at $(git rev-parse --short HEAD). Machine: $(nproc) cores, $(uname -sr). Load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "$target/release/examples/bench_crl_shards" "$@"
  echo
  echo "Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$out"
