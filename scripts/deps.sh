#!/usr/bin/env bash
# Install the OS packages the CA and its tests need, if missing (Debian/Ubuntu, Fedora/RHEL,
# macOS with Homebrew). Usage: scripts/deps.sh [runtime|test]
set -euo pipefail
kind="${1:-runtime}"
need=()
have() { command -v "$1" >/dev/null 2>&1; }
softhsm_present() {
  [ -n "${PKCS11_MODULE:-}" ] && [ -e "${PKCS11_MODULE}" ] && return 0
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so \
           /usr/lib64/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -e "$p" ] && return 0
  done
  return 1
}
softhsm_present || need+=(softhsm)
have openssl || need+=(openssl)
if [ "$kind" = test ]; then
  have curl || need+=(curl)
  { have nginx || [ -x /usr/sbin/nginx ]; } || need+=(nginx)
  have wrk || need+=(wrk)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}" >&2
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && have sudo && sudo_cmd="sudo"
if have apt-get; then
  pkgs=()
  for n in "${need[@]}"; do case "$n" in softhsm) pkgs+=(softhsm2);; *) pkgs+=("$n");; esac; done
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${pkgs[@]}" >/dev/null
elif have dnf; then
  pkgs=()
  for n in "${need[@]}"; do case "$n" in softhsm) pkgs+=(softhsm);; *) pkgs+=("$n");; esac; done
  $sudo_cmd dnf install -y -q "${pkgs[@]}"
elif have brew; then
  pkgs=()
  for n in "${need[@]}"; do case "$n" in softhsm) pkgs+=(softhsm);; *) pkgs+=("$n");; esac; done
  brew install "${pkgs[@]}"
else
  echo "cannot install ${need[*]}: no apt-get, dnf or brew; install them by hand" >&2
  exit 1
fi
