#!/usr/bin/env bash
# Quick start: install SoftHSM2 if missing, then run a development CA in ./ca-data
# (provisions a SoftHSM token, runs a dev ceremony, writes ca-data/dev.env, serves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh runtime
exec cargo run --release --locked -p ca-server -- dev --data "${CA_DATA:-./ca-data}" "$@"
