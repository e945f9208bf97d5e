# Sourced by the bench scripts: a throwaway PostgreSQL cluster of the distribution's (initdb,
# pg_ctl) on 127.0.0.1, in "$1.pg", run as user postgres when root. Sets pgbin, pgdata, pgport
# and exports CA_BENCH_DATABASE_URL; stop_postgres stops it (call it from the EXIT trap).
# BENCH_PG_STATS=1: load pg_stat_statements and, before stopping, print to stderr the statements
# that cost the database the most (calls, total and mean time): where a run's database time went.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
BENCH_PG_PIN="${BENCH_PG_PIN:-}"

start_postgres() {
  pgbin="$(command -v pg_ctl >/dev/null && dirname "$(readlink -f "$(command -v pg_ctl)")" || ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  [ -x "$pgbin/initdb" ] || { echo "PostgreSQL is not installed (scripts/deps.sh installs it)" >&2; exit 1; }
  pgdata="$1.pg"
  mkdir -p "$pgdata"; [ "$(id -u)" = 0 ] && chown postgres "$pgdata"
  as_pg "$pgbin/initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 >/dev/null
  pgport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  # shellcheck disable=SC2086  # BENCH_PG_PIN: a taskset prefix (bench/api.sh --pin), or empty
  as_pg $BENCH_PG_PIN "$pgbin/pg_ctl" -D "$pgdata" -l "$pgdata/log" -w -o "-p $pgport -c listen_addresses=127.0.0.1 -c unix_socket_directories=$pgdata -c max_connections=200${BENCH_PG_STATS:+ -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all}" start >/dev/null
  as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U postgres ca
  if [ -n "${BENCH_PG_STATS:-}" ]; then
    as_pg "$pgbin/psql" -qAt -h 127.0.0.1 -p "$pgport" -U postgres -d ca -c 'CREATE EXTENSION pg_stat_statements' >/dev/null
  fi
  export CA_BENCH_DATABASE_URL="postgresql://postgres@127.0.0.1:$pgport/ca"
  echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pgport" >&2
}

stop_postgres() {
  if [ -n "${pgdata:-}" ]; then
    if [ -n "${BENCH_PG_STATS:-}" ]; then
      echo "PostgreSQL statements by total time (pg_stat_statements):" >&2
      as_pg "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U postgres -d ca -P pager=off -c \
        "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 25" >&2 || true
    fi
    as_pg "$pgbin/pg_ctl" -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pgdata"
  fi
}

# Point a ca-server configuration file at that database ([store] replaced; BENCH_PG_POOL=N sets
# its pool_size).
use_postgres_store() {
  awk '/^\[store\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip { print }' "$1" >"$1.new"
  printf '\n[store]\nkind = "postgres"\nurl = { env = "CA_BENCH_DATABASE_URL" }\n' >>"$1.new"
  if [ -n "${BENCH_PG_POOL:-}" ]; then printf 'pool_size = %s\n' "$BENCH_PG_POOL" >>"$1.new"; fi
  mv "$1.new" "$1"
}
