#!/usr/bin/env bash
# What a certificate costs in the sled store, record by record: a fresh `ca-server dev` (P-256,
# SoftHSM, durable sled), N enrollments through the HTTPS API (ca-server/examples/bench_api.rs,
# one token each: certificate record, identity/expiry/lineage indexes, OCSP response pre-signed
# at issuance, audit events, token record), the server stopped, then every tree of the store read
# once (ca-server/examples/storage_report.rs): records, key and value bytes, bytes per
# certificate, and the directory's size on disk. Then the audit log archived and truncated below
# its latest checkpoint (`ca-server audit archive` / `audit truncate`) and the store read again:
# what the audit log costs once archived (sled reclaims the freed space on disk lazily).
#
# Usage: bench/storage.sh [N]   (default 10000)
# BENCH_PROFILE=dev builds without --release (slower issuance, same bytes).
# BENCH_DIR picks where the store lives (default /var/tmp). Writes bench/results/storage.md
# (BENCH_OUT=FILE: there instead).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
profile="${BENCH_PROFILE:-release}"
target="${CARGO_TARGET_DIR:-target}"
if [ "$profile" = release ]; then
  cargo build --release --locked -p ca-server --bin ca-server --example bench_api --example storage_report >&2
  out_dir="$target/release"
else
  cargo build --locked -p ca-server --bin ca-server --example bench_api --example storage_report >&2
  out_dir="$target/debug"
fi
bin="$out_dir/ca-server"

dir="$(mktemp -d "${BENCH_DIR:-/var/tmp}/ca-bench-storage.XXXXXX")"
log="$dir.log"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$dir" "$log"
}
trap cleanup EXIT

start_server() {
  rm -f "$dir/dev.env"
  "$bin" dev --data "$dir" --listen 127.0.0.1:0 --status-listen 127.0.0.1:0 >>"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    [ -f "$dir/dev.env" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "storage.sh: ca-server dev exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "storage.sh: ca-server dev did not come up" >&2; exit 1
}
stop_server() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

# A dev CA, its rate limits raised for this run (as bench/api.sh), then N enrollments.
start_server
stop_server
awk '
  /^\[/ { sec = $0 }
  (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^per_second =/ { $0 = "per_second = 1000000" }
  (sec == "[limits.enroll]" || sec == "[limits.renew]" || sec == "[limits.admin]") && /^burst =/ { $0 = "burst = 1000000" }
  { print }
' "$dir/config.toml" >"$dir/config.toml.new"
mv "$dir/config.toml.new" "$dir/config.toml"

start_server
# shellcheck disable=SC1091
. "$dir/dev.env"
"$out_dir/examples/bench_api" --url "$CA_URL" --root "$CA_ROOT" --admin-cert "$CA_ADMIN_CERT" \
  --admin-key "$CA_ADMIN_KEY" --enroll "$n" --renew 0 --conns 8 >&2
stop_server

mkdir -p bench/results
out="${BENCH_OUT:-bench/results/storage.md}"
{
  echo "### Store bytes per certificate, sled ($(date -u +%Y-%m-%d\ %H:%M\ UTC))"
  echo
  echo "Command: \`bench/storage.sh $n\` ($profile build) at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ca-core ca-server || echo '+changes'). $n enrollments (one token each) on a fresh \`ca-server dev\` (P-256, SoftHSM, durable sled), server stopped, every tree read."
  echo
  "$out_dir/examples/storage_report" "$dir/store"
  "$bin" audit archive --config "$dir/config.toml" --out "$dir/audit-archive.ndjson" --json >"$dir.archive.json"
  seq="$(grep -o '"seq": *[0-9]*' "$dir.archive.json" | head -1 | grep -o '[0-9]*$')"
  "$bin" audit truncate --config "$dir/config.toml" --below-checkpoint "$seq" \
    --archive "$dir/audit-archive.ndjson" >&2
  echo
  echo "After \`ca-server audit archive\` (archive file: $(stat -c %s "$dir/audit-archive.ndjson") bytes) and \`audit truncate --below-checkpoint $seq\`:"
  echo
  "$out_dir/examples/storage_report" "$dir/store"
  rm -f "$dir.archive.json"
} | tee "$out"
