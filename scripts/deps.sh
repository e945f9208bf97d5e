#!/usr/bin/env bash
# Install the OS packages the CA and its tests need, if missing (Debian/Ubuntu, Fedora/RHEL,
# macOS with Homebrew). Usage: scripts/deps.sh [runtime|test]
#
# `test` also installs DigiCert's pkilint (PyPI package `pkilint`: lint_pkix_cert, lint_crl,
# lint_ocsp_response, ...), the independent RFC 5280/6960 linter of the lint tests, into a
# virtual environment at .venv-lint unless its commands are already on PATH. The tests look
# there (and in $PKILINT_DIR, then PATH) and fail, saying so, when it is missing.
set -euo pipefail
kind="${1:-runtime}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-lint"
need=()
have() { command -v "$1" >/dev/null 2>&1; }
pkilint_present() { have lint_pkix_cert || [ -x "$venv/bin/lint_pkix_cert" ]; }
softhsm_present() {
  [ -n "${PKCS11_MODULE:-}" ] && [ -e "${PKCS11_MODULE}" ] && return 0
  for p in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so \
           /usr/lib64/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    [ -e "$p" ] && return 0
  done
  return 1
}
# initdb and pg_ctl (the PostgreSQL store's tests start throwaway clusters: testkit::pg).
postgres_present() {
  { have initdb && have pg_ctl; } && return 0
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && return 0
  done
  return 1
}
spy_present() {
  local p
  for p in /usr/lib/*/pkcs11/pkcs11-spy.so /usr/lib64/pkcs11/pkcs11-spy.so /usr/lib/pkcs11/pkcs11-spy.so \
           /usr/local/lib/pkcs11/pkcs11-spy.so /opt/homebrew/lib/pkcs11/pkcs11-spy.so; do
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
  # OpenSC's pkcs11-spy logs every PKCS#11 call of a server under test (ca-server/tests/
  # readiness.rs, shutdown.rs).
  spy_present || need+=(opensc)
  # Java's PKIX validator (ca-server/tests/java.rs) runs a single source file: a JDK, not a JRE.
  { have java && have javac; } || need+=(jdk)
  postgres_present || need+=(postgresql)
  if ! pkilint_present; then
    # Debian's python3 has no venv/ensurepip without python3-venv.
    if ! have python3 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      need+=(python3 python3-venv)
    fi
  fi
fi

install_pkilint() {
  pkilint_present && return 0
  echo "installing pkilint (PyPI) into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pkilint
  "$venv/bin/lint_pkix_cert" --help >/dev/null
}

if [ ${#need[@]} -eq 0 ]; then
  [ "$kind" = test ] && install_pkilint
  exit 0
fi
echo "installing: ${need[*]}" >&2
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && have sudo && sudo_cmd="sudo"
if have apt-get; then
  pkgs=()
  for n in "${need[@]}"; do case "$n" in softhsm) pkgs+=(softhsm2);; jdk) pkgs+=(default-jdk-headless);; *) pkgs+=("$n");; esac; done
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${pkgs[@]}" >/dev/null
  # Debian's postgresql package starts a cluster service; the tests need only the binaries.
  case " ${need[*]} " in *" postgresql "*)
    $sudo_cmd systemctl disable --now postgresql >/dev/null 2>&1 || $sudo_cmd service postgresql stop >/dev/null 2>&1 || true;;
  esac
elif have dnf; then
  pkgs=()
  for n in "${need[@]}"; do case "$n" in softhsm) pkgs+=(softhsm);; jdk) pkgs+=(java-devel);; python3-venv) ;; postgresql) pkgs+=(postgresql-server);; *) pkgs+=("$n");; esac; done
  $sudo_cmd dnf install -y -q "${pkgs[@]}"
elif have brew; then
  pkgs=()
  for n in "${need[@]}"; do case "$n" in softhsm) pkgs+=(softhsm);; jdk) pkgs+=(openjdk);; python3) pkgs+=(python);; postgresql) pkgs+=(postgresql@16);; python3-venv) ;; *) pkgs+=("$n");; esac; done
  brew install "${pkgs[@]}"
else
  echo "cannot install ${need[*]}: no apt-get, dnf or brew; install them by hand" >&2
  exit 1
fi
[ "$kind" = test ] && install_pkilint
exit 0
