#!/usr/bin/env bash
# The Debian packages, end to end, as root on a Debian machine (CI runs it after the test suite;
# README "Packages"):
#
#  1. build them (scripts/package.sh) and install them with apt-get;
#  2. check what they installed: the ca-server system user, the units (`systemd-analyze verify`
#     when available), the conffiles, the man pages (`man -w`), the completions;
#  3. provision a CA for the test: a rehearsal of the key ceremonies on throwaway SoftHSM tokens
#     (`ceremony dev`, the workspace's debug build) into /var/lib/ca/pki, and /etc/ca/ca.toml
#     pointing at it, on 127.0.0.1 and free ports;
#  4. start the CA the way ca-server.service does, without systemd (a container has none):
#     ExecStart, User, Group, UMask, EnvironmentFile, NoNewPrivileges and an empty
#     CapabilityBoundingSet read from the INSTALLED unit, applied with setpriv, in a clean
#     environment, from /;
#  5. as an operator would: an administrator certificate (break-glass, before the start), a
#     token (`ca-server token create`), then `ca-agent enroll` with the installed agent and the
#     installed /etc/ca-agent/agent.toml; assert the certificate was written, chains to the root,
#     matches its key, is `good` over OCSP; `ca-agent renew --force` renews it over mTLS;
#  6. stop the CA (SIGTERM: exit 0) and purge both packages.
#
# It refuses to run where ca-server, ca-agent, their user or their directories exist already:
# it takes them over and removes them at the end. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$(pwd)
export DEBIAN_FRONTEND=noninteractive

say() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root: it installs and purges packages"
for p in ca-server ca-agent; do
  if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
    fail "$p is installed already (this test installs and purges it)"
  fi
done
if getent passwd ca-server >/dev/null; then fail "user ca-server exists already"; fi
for d in /etc/ca /var/lib/ca /etc/ca-agent /var/lib/ca-agent; do
  [ ! -e "$d" ] || fail "$d exists already"
done
for tool in setpriv curl openssl python3; do
  command -v "$tool" >/dev/null || fail "$tool is missing"
done

target="${CARGO_TARGET_DIR:-target}"
target=$(cd "$target" 2>/dev/null && pwd || echo "$root_dir/target")
work=$(mktemp -d /tmp/ca-packages.XXXXXX)
chmod 0755 "$work"
ca_pid=""
installed=0

cleanup() {
  local status=$?
  set +e
  if [ -n "$ca_pid" ] && kill -0 "$ca_pid" 2>/dev/null; then
    kill -TERM "$ca_pid"
    for _ in $(seq 1 100); do kill -0 "$ca_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ca_pid" 2>/dev/null
  fi
  if [ "$installed" -eq 1 ]; then
    apt-get purge -y -qq ca-server ca-agent >/dev/null 2>&1 || dpkg --purge ca-server ca-agent >/dev/null 2>&1
  fi
  # What the packages leave on purge by design (README "Packages"): the CA's state, the agent's
  # keys, the system user. This test made them, so it removes them.
  rm -rf /var/lib/ca /var/lib/ca-agent /etc/ca /etc/ca-agent
  if getent passwd ca-server >/dev/null; then userdel ca-server; fi
  if getent group ca-server >/dev/null; then groupdel ca-server; fi
  if [ "$status" -ne 0 ] && [ -f "$work/ca-server.log" ]; then
    echo "--- ca-server log (last 40 lines)" >&2
    tail -n 40 "$work/ca-server.log" >&2
  fi
  rm -rf "$work"
  [ "$status" -eq 0 ] && echo "test-packages: OK" >&2 || echo "test-packages: FAILED ($status)" >&2
  exit "$status"
}
trap cleanup EXIT

say "build the packages (scripts/package.sh)"
started=$(date +%s)
mapfile -t debs < <(CARGO_TARGET_DIR="$target" scripts/package.sh)
[ "${#debs[@]}" -eq 2 ] || fail "expected two packages, got: ${debs[*]}"
echo "built in $(( $(date +%s) - started )) s: ${debs[*]}" >&2

say "install them with apt-get"
installed=1
apt-get install -y -qq "${debs[@]}" >/dev/null || fail "apt-get install ${debs[*]}"
for p in ca-server ca-agent; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p")" = installed ] || fail "$p not installed"
done
/usr/bin/ca-server --version | grep -Eq '^ca-server [0-9]+\.[0-9]+\.[0-9]+ \(commit [^)]+\)$' \
  || fail "ca-server --version: $(/usr/bin/ca-server --version)"
/usr/bin/ca-agent --version | grep -Eq '^ca-agent [0-9]+\.[0-9]+\.[0-9]+ \(commit [^)]+\)$' \
  || fail "ca-agent --version: $(/usr/bin/ca-agent --version)"
/usr/bin/ca-server --version >&2
/usr/bin/ca-agent --version >&2
# The production build: no development CA in the package.
if /usr/bin/ca-server dev --data "$work/no-dev" >"$work/no-dev.log" 2>&1; then
  fail "the packaged ca-server made a development CA (built with the dev feature)"
fi
grep -q "without the \`dev\` feature" "$work/no-dev.log" || fail "ca-server dev: $(cat "$work/no-dev.log")"

say "the system user"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd ca-server)
[ "$uid" -lt 1000 ] || fail "ca-server is not a system user (uid $uid)"
[ "$home" = /var/lib/ca ] || fail "home of ca-server is $home"
case "$shell" in */nologin|/bin/false) ;; *) fail "ca-server has a login shell: $shell" ;; esac
[ "$(stat -c '%U:%G %a' /var/lib/ca)" = "ca-server:ca-server 750" ] \
  || fail "/var/lib/ca: $(stat -c '%U:%G %a' /var/lib/ca)"
[ "$(stat -c '%U:%G %a' /etc/ca)" = "root:ca-server 750" ] || fail "/etc/ca: $(stat -c '%U:%G %a' /etc/ca)"

say "the units"
unit_path() { dpkg -L "$1" | grep -E "/systemd/system/$2\$" | head -n 1; }
server_unit=$(unit_path ca-server ca-server.service)
ocsp_unit=$(unit_path ca-server ca-server-ocsp.service)
agent_unit=$(unit_path ca-agent ca-agent.service)
for u in "$server_unit" "$ocsp_unit" "$agent_unit"; do
  [ -n "$u" ] && [ -f "$u" ] || fail "a unit is missing: '$server_unit' '$ocsp_unit' '$agent_unit'"
  for key in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes Restart=on-failure \
             RestartSec= CapabilityBoundingSet=; do
    grep -q "^$key" "$u" || fail "$u has no $key"
  done
done
grep -qx 'CapabilityBoundingSet=' "$server_unit" || fail "ca-server.service keeps capabilities"
grep -qx 'CapabilityBoundingSet=' "$ocsp_unit" || fail "ca-server-ocsp.service keeps capabilities"
grep -qx 'User=ca-server' "$server_unit" && grep -qx 'User=ca-server' "$ocsp_unit" \
  || fail "the CA units do not run as ca-server"
grep -qx 'ReadWritePaths=/var/lib/ca' "$server_unit" || fail "ca-server.service: ReadWritePaths"
if command -v systemd-analyze >/dev/null; then
  # Offline: checks syntax, directives and that ExecStart exists (no running systemd needed).
  for u in "$server_unit" "$ocsp_unit" "$agent_unit"; do
    out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$u" 2>&1) || fail "systemd-analyze verify $u: $out"
    # Ignore what it says about other units of the machine.
    if printf '%s\n' "$out" | grep -F "$(basename "$u")"; then fail "systemd-analyze verify $u: $out"; fi
  done
  echo "systemd-analyze verify: the three units are clean" >&2
else
  echo "systemd-analyze not installed: unit syntax not verified" >&2
fi

say "conffiles, man pages, completions"
dpkg-query -W -f='${Conffiles}\n' ca-server | grep -q '/etc/ca/ca.toml' || fail "/etc/ca/ca.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' ca-server | grep -q '/etc/ca/ocsp.toml' || fail "/etc/ca/ocsp.toml is not a conffile"
dpkg-query -W -f='${Conffiles}\n' ca-agent | grep -q '/etc/ca-agent/agent.toml' || fail "agent.toml is not a conffile"
/usr/bin/ca-server check-config --config /etc/ca/ca.toml >/dev/null || fail "the shipped /etc/ca/ca.toml does not check"
dpkg -L ca-server | grep -qx /usr/share/man/man1/ca-server-token-create.1.gz || fail "no man pages in ca-server"
if grep -qs '^path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/*; then
  # Minimal container images tell dpkg not to install man pages at all.
  echo "NOTE: dpkg excludes /usr/share/man on this machine: installed man pages not checked" >&2
else
  command -v man >/dev/null || fail "man is missing (man-db)"
  for page in ca-server ca-server-serve ca-server-ocsp ca-server-token-create ca-server-admin-cert-create \
              ca-agent ca-agent-enroll ca-agent-run; do
    path=$(man -w "$page") || fail "man -w $page"
    case "$path" in /usr/share/man/man1/"$page".1.gz) ;; *) fail "man -w $page: $path" ;; esac
  done
fi
if command -v groff >/dev/null && [ -e /usr/share/man/man1/ca-server.1.gz ]; then
  for page in /usr/share/man/man1/ca-server*.1.gz /usr/share/man/man1/ca-agent*.1.gz; do
    warnings=$(zcat "$page" | groff -man -Tutf8 -ww -z 2>&1 || true)
    [ -z "$warnings" ] || fail "groff on $page: $warnings"
  done
fi
for bin in ca-server ca-agent; do
  for f in /usr/share/bash-completion/completions/$bin /usr/share/zsh/vendor-completions/_$bin \
           /usr/share/fish/vendor_completions.d/$bin.fish; do
    [ -s "$f" ] || fail "missing completion $f"
  done
  bash --norc -c ". /usr/share/bash-completion/completions/$bin && complete -p $bin" >/dev/null \
    || fail "the bash completion of $bin does not load"
done

say "provision a CA for the test: ceremony rehearsal into /var/lib/ca/pki"
read -r api_port status_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
# The test suite's build, else a debug build now (a provisioning tool, not under test here).
ceremony="$target/debug/ceremony"
[ -x "$ceremony" ] || cargo build --locked -q -p ceremonies --bin ceremony
status_url="http://127.0.0.1:$status_port"
"$ceremony" dev --out /var/lib/ca/pki --status-base-url "$status_url" >"$work/ceremony.out"
field() { sed -n "s/^  $1 *//p" "$work/ceremony.out" | head -n 1; }
root_pem=$(field "root certificate")
fingerprint=$(field "root SHA-256")
intermediate=$(field "intermediate  ")
ocsp_cert=$(field "OCSP signer")
root_crl=$(field "root CRL")
intermediate_ocsp=$(field "intermediate OCSP")
softhsm_conf=$(field "SOFTHSM2_CONF")
online=$(field "online token")
token_label=${online%% *}
pin_file=$(printf '%s' "$online" | sed -n 's/.*(PIN file \(.*\))$/\1/p')
module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so; do
  [ -e "$m" ] && { module=$m; break; }
done
for v in root_pem fingerprint intermediate ocsp_cert root_crl intermediate_ocsp softhsm_conf token_label pin_file module; do
  [ -n "${!v}" ] || fail "ceremony dev: no $v in $(cat "$work/ceremony.out")"
done
# The service user owns its tokens (SoftHSM writes lock and object files) and PIN file.
chown -R ca-server:ca-server /var/lib/ca/pki
cat >/etc/ca/ca.toml <<EOF
# Written by scripts/test-packages.sh.
data_dir = "/var/lib/ca"
[listen]
api = "127.0.0.1:$api_port"
status = "127.0.0.1:$status_port"
[hsm]
module = "$module"
token_label = "$token_label"
pin = { file = "$pin_file" }
issuing_key = "issuing-ca"
softhsm_conf = "$softhsm_conf"
[ca]
certificate = "$intermediate"
chain = "$root_pem"
[urls]
ocsp = "$status_url/ocsp"
ca_issuers = "$status_url/ca.crt"
crl = "$status_url/crl"
[tls]
names = ["dns:localhost", "ip:127.0.0.1"]
[ocsp]
signer_key = "ocsp-signer"
signer_cert = "$ocsp_cert"
external_responses = ["$intermediate_ocsp"]
[crl]
root_crl = "$root_crl"
[audit]
key = "audit-checkpoint"
[log]
json = true
[profiles.server]
validity = "24h"
extended_key_usage = ["server_auth"]
names = { dns = [".example.com"] }
EOF
/usr/bin/ca-server check-config --config /etc/ca/ca.toml >/dev/null || fail "the test's /etc/ca/ca.toml"

# How ca-server.service runs ExecStart: its User/Group, UMask, EnvironmentFile, a clean
# environment, cwd /, NoNewPrivileges, and no capability when CapabilityBoundingSet= is empty.
# It replaces the calling shell (exec): run it in a subshell, `( as_unit ... )` or `as_unit ... &`.
unit_value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }
as_unit() {
  local unit=$1; shift
  local user group umask_ envfile caps
  user=$(unit_value "$unit" User); group=$(unit_value "$unit" Group)
  umask_=$(unit_value "$unit" UMask); envfile=$(unit_value "$unit" EnvironmentFile)
  caps=$(unit_value "$unit" CapabilityBoundingSet)
  local opts=(--reuid="$user" --regid="$group" --init-groups)
  [ "$(unit_value "$unit" NoNewPrivileges)" = yes ] && opts+=(--no-new-privs)
  [ -z "$caps" ] && opts+=(--bounding-set=-all --inh-caps=-all)
  local envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
              HOME="$(getent passwd "$user" | cut -d: -f6)" USER="$user" LOGNAME="$user")
  if [ -n "$envfile" ] && [ -f "${envfile#-}" ]; then
    while IFS= read -r line; do
      case "$line" in ''|'#'*) ;; *) envs+=("$line") ;; esac
    done <"${envfile#-}"
  fi
  cd /
  umask "${umask_:-0022}"
  exec env -i "${envs[@]}" setpriv "${opts[@]}" -- "$@"
}

say "an administrator certificate (break-glass, as the service user, before the start)"
install -d -o ca-server -g ca-server -m 0700 /var/lib/ca/admin
( as_unit "$server_unit" /usr/bin/ca-server admin-cert create --offline --config /etc/ca/ca.toml \
  --role security-officer --name pkg-admin --out /var/lib/ca/admin ) >"$work/admin.out" 2>&1 \
  || fail "admin-cert create --offline: $(cat "$work/admin.out")"
[ "$(stat -c '%U %a' /var/lib/ca/admin/pkg-admin.key)" = "ca-server 600" ] || fail "admin key mode"

say "start the CA as ca-server.service does"
exec_start=$(unit_value "$server_unit" ExecStart)
echo "ExecStart=$exec_start (User=$(unit_value "$server_unit" User))" >&2
# shellcheck disable=SC2086 # ExecStart is split into words as systemd does (no quoting in it)
as_unit "$server_unit" $exec_start >"$work/ca-server.log" 2>&1 &
ca_pid=$!
for _ in $(seq 1 300); do
  kill -0 "$ca_pid" 2>/dev/null || fail "ca-server exited: $(tail -n 20 "$work/ca-server.log")"
  if curl -sf --cacert "$root_pem" "https://127.0.0.1:$api_port/readyz" >/dev/null 2>&1; then break; fi
  sleep 0.2
done
curl -sf --cacert "$root_pem" "https://127.0.0.1:$api_port/readyz" >/dev/null || fail "the CA is not ready"
# $ca_pid is ca-server itself (the subshell exec'd env, setpriv, then ca-server).
[ "$(readlink "/proc/$ca_pid/exe")" = /usr/bin/ca-server ] || fail "pid $ca_pid is $(readlink "/proc/$ca_pid/exe")"
[ "$(stat -c %U "/proc/$ca_pid")" = ca-server ] || fail "ca-server does not run as ca-server"
grep -q '^CapBnd:[[:space:]]*0000000000000000$' "/proc/$ca_pid/status" || fail "ca-server has a capability bounding set"
grep -q '^NoNewPrivs:[[:space:]]*1$' "/proc/$ca_pid/status" || fail "ca-server may gain privileges"
echo "ca-server serving on 127.0.0.1:$api_port and :$status_port as ca-server, no capabilities" >&2

say "enroll with the installed ca-agent and /etc/ca-agent/agent.toml"
# As its comments say: set `server` and `root_fingerprint`, then enroll with a token file.
sed -i -e "s|^server = .*|server = \"https://127.0.0.1:$api_port\"|" \
  -e "s|^root_fingerprint = .*|root_fingerprint = \"$fingerprint\"|" /etc/ca-agent/agent.toml
grep -q "^server = \"https://127.0.0.1:$api_port\"" /etc/ca-agent/agent.toml || fail "agent.toml has no server line"
grep -q "^root_fingerprint = \"$fingerprint\"" /etc/ca-agent/agent.toml || fail "agent.toml has no root_fingerprint line"
admin=(--url "https://127.0.0.1:$api_port" --root "$root_pem"
       --cert /var/lib/ca/admin/pkg-admin.crt --key /var/lib/ca/admin/pkg-admin.key)
/usr/bin/ca-server token create "${admin[@]}" --cn host.example.com --san dns:host.example.com \
  --profile server >"$work/host.token" 2>"$work/token.err" || fail "token create: $(cat "$work/token.err")"
chmod 0600 "$work/host.token"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/ca-agent enroll --config /etc/ca-agent/agent.toml \
  --name host --token-file "$work/host.token" >"$work/enroll.out" 2>&1 || fail "ca-agent enroll: $(cat "$work/enroll.out")"
cat "$work/enroll.out" >&2
cert=/etc/ca-agent/tls/host.crt
key=/etc/ca-agent/tls/host.key
[ -s "$cert" ] && [ -s "$key" ] || fail "no certificate at $cert"
openssl verify -CAfile "$root_pem" -untrusted "$intermediate" "$cert" >/dev/null || fail "$cert does not chain to the root"
[ "$(openssl x509 -in "$cert" -noout -pubkey | openssl sha256)" = "$(openssl pkey -in "$key" -pubout | openssl sha256)" ] \
  || fail "key and certificate do not match"
[ "$(stat -L -c '%a' "$key")" = 600 ] || fail "key mode $(stat -L -c '%a' "$key")"
openssl x509 -in "$cert" -noout -ext subjectAltName | grep -q 'DNS:host.example.com' || fail "SAN missing"
ocsp=$(openssl ocsp -issuer "$intermediate" -cert "$cert" -url "$status_url/ocsp" -CAfile "$root_pem" -verify_other "$intermediate" -no_nonce 2>&1) \
  || fail "openssl ocsp: $ocsp"
printf '%s\n' "$ocsp" | grep -q "^$cert: good" || fail "OCSP: $ocsp"
serial=$(openssl x509 -in "$cert" -noout -serial)

say "renew over mTLS with the installed agent (ca-agent renew --force)"
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/ca-agent renew --config /etc/ca-agent/agent.toml \
  --name host --force >"$work/renew.out" 2>&1 || fail "ca-agent renew: $(cat "$work/renew.out")"
[ "$(openssl x509 -in "$cert" -noout -serial)" != "$serial" ] || fail "renew did not replace the certificate"
/usr/bin/ca-agent status --config /etc/ca-agent/agent.toml >"$work/status.out" 2>&1 || fail "ca-agent status: $(cat "$work/status.out")"

say "stop the CA (SIGTERM), then purge"
kill -TERM "$ca_pid"
ca_status=0
wait "$ca_pid" || ca_status=$?
ca_pid=""
[ "$ca_status" -eq 0 ] || fail "ca-server exited $ca_status on SIGTERM"
apt-get purge -y -qq ca-server ca-agent >/dev/null || fail "apt-get purge"
installed=0
for f in /usr/bin/ca-server /usr/bin/ca-agent /etc/ca/ca.toml /etc/ca/ocsp.toml /etc/ca-agent/agent.toml \
         "$server_unit" "$agent_unit" /usr/share/man/man1/ca-server.1.gz; do
  [ ! -e "$f" ] || fail "$f is still there after purge"
done
echo "packages purged" >&2
