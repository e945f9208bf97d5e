#!/usr/bin/env bash
# Install what the tests need (SoftHSM2, OpenSSL, nginx, curl, wrk, a JDK, pkilint) and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
cargo test --workspace --locked "$@"
