#!/usr/bin/env bash
# Quick start: install SoftHSM2 if missing, build every binary the README uses next (ca-server,
# ca-agent, ceremony, hsm-sim) into target/release, then run a development CA in ./ca-data
# (provisions a SoftHSM token, runs a dev ceremony, writes ca-data/dev.env, serves).
# ca-data/dev.env puts target/release first on PATH: `. ca-data/dev.env` in another shell, then
# the commands `ca-server dev` prints work as printed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh runtime
cargo build --release --locked -p ca-server -p ca-agent -p ceremonies -p hsm-sim
exec "${CARGO_TARGET_DIR:-target}/release/ca-server" dev --data "${CA_DATA:-./ca-data}" "$@"
