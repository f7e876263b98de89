#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (issue 13): the backend's conformance suite and
# the several-runner tests find it through TRELLIS_TEST_POSTGRES_URL.
#
#   tests/support/postgres.sh start   # prints the URL (only the URL) on stdout
#   tests/support/postgres.sh stop    # stops the cluster and removes its folder
#   tests/support/postgres.sh status  # exit 0 when the cluster runs, printing the URL
#   eval "$(tests/support/postgres.sh env)"   # start, then export the variable in a shell
#
# - TRELLIS_TEST_POSTGRES_URL already set: that database is used and nothing is started
#   (`start` prints it). `stop` only ever stops the cluster in this script's own folder.
# - Binaries: Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`, the newest
#   version there), or $TRELLIS_TEST_PG_BIN. test.sh installs the package when it is missing.
# - initdb refuses to run as root, so as root (CI) `initdb`, `pg_ctl` and the admin `psql` run
#   as the package's `postgres` user through runuser (a `trellis-pg` system user is created
#   when there is no `postgres` user); as anyone else they run as that user.
# - Everything lives in one temporary folder per checkout ($TRELLIS_TEST_POSTGRES_DIR, default
#   /tmp/trellis-pg-<uid>-<hash of the checkout's path>): data/, the unix socket in socket/
#   (mode 0700, trust for the cluster owner only), log, and url. A second `start` while it runs
#   prints the same URL at once; a cluster left stopped (a reboot) is started again without a
#   new initdb; one that will not start is made again from scratch.
# - It listens on 127.0.0.1 only, on a free port, and on its socket. Tests connect over TCP as
#   role `trellis` (LOGIN, CREATEDB: a test may make a database of its own) with a random
#   password (scram-sha-256) to database `trellis`, owned by that role (so tests may create
#   schemas in it, one per test).
# - Durability is PostgreSQL's default: fsync, synchronous_commit and full_page_writes stay on,
#   because the crash tests rely on commits being durable and the benchmark on realistic commit
#   cost. Changed, and why: `initdb --no-sync` (initdb only: the fresh, empty files are not
#   flushed; a machine crash before they reach disk loses a cluster that is thrown away anyway;
#   saves about a second); locale C with UTF8 (ids sort bytewise as in SQLite, whatever the host
#   locale); max_connections 300 (several test pools and three runner processes at once);
#   idle_in_transaction_session_timeout 60s (a test that stops a runner with SIGSTOP inside a
#   transaction cannot hold its row locks for ever); logging of lock waits.
set -euo pipefail

say() { printf 'postgres.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
uid=$(id -u)
checkout_hash=$(printf '%s' "$root" | cksum | cut -d' ' -f1)
dir="${TRELLIS_TEST_POSTGRES_DIR:-/tmp/trellis-pg-$uid-$checkout_hash}"
data="$dir/data"
socket="$dir/socket"
log="$dir/log"
url_file="$dir/url"

# --- binaries and the user that runs them ----------------------------------------------------
find_bin() {
  if [ -n "${TRELLIS_TEST_PG_BIN:-}" ]; then
    printf '%s\n' "$TRELLIS_TEST_PG_BIN"
    return
  fi
  local newest
  newest=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 || true)
  if [ -n "$newest" ]; then
    dirname "$newest"
  elif command -v pg_config > /dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
  else
    die "no initdb: install Debian's postgresql package (./test.sh does) or set TRELLIS_TEST_PG_BIN"
  fi
}

# The cluster's owner: the current user, or an unprivileged one when root.
owner() {
  if [ "$uid" -ne 0 ]; then
    id -un
  elif getent passwd postgres > /dev/null; then
    echo postgres
  else
    getent passwd trellis-pg > /dev/null ||
      useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin trellis-pg
    echo trellis-pg
  fi
}

# Runs a command as the cluster owner, from the cluster's folder (the owner may not be able to
# read the caller's working directory).
as_owner() {
  if [ "$uid" -ne 0 ]; then
    (cd "$dir" && "$@")
  elif command -v runuser > /dev/null 2>&1; then
    (cd "$dir" && runuser -u "$pg_user" -- "$@")
  else
    local quoted
    quoted=$(printf '%q ' "$@")
    (cd "$dir" && su -s /bin/sh "$pg_user" -c "$quoted")
  fi
}

running() {
  [ -f "$data/postmaster.pid" ] && [ -f "$url_file" ] && as_owner "$bin/pg_ctl" status -D "$data" > /dev/null 2>&1
}

free_port() {
  if command -v python3 > /dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    echo $((20000 + RANDOM % 40000))
  fi
}

admin_psql() {
  as_owner "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$socket" -p "$port" -U postgres -d postgres "$@"
}

# --- start -----------------------------------------------------------------------------------
# Removes the folder, only when it is one this script made (TRELLIS_TEST_POSTGRES_DIR may
# point anywhere).
remove_dir() {
  [ -d "$dir" ] || return 0
  if [ -f "$dir/.trellis-test-postgres" ] || [ -z "$(ls -A "$dir")" ]; then
    rm -rf "$dir"
  else
    die "$dir is not a folder this script made; not removing it"
  fi
}

init_cluster() {
  remove_dir
  mkdir -p "$dir" "$socket"
  touch "$dir/.trellis-test-postgres"
  chmod 0700 "$socket"
  [ "$uid" -ne 0 ] || chown -R "$pg_user:" "$dir"
  as_owner "$bin/initdb" -D "$data" --username=postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-locale --encoding=UTF8 --no-sync > "$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  cat >> "$data/postgresql.conf" <<EOF

# tests/support/postgres.sh: a throwaway cluster for the tests. fsync, synchronous_commit and
# full_page_writes keep their defaults (on): the crash tests need durable commits.
listen_addresses = '127.0.0.1'
unix_socket_directories = '$socket'
max_connections = 300
idle_in_transaction_session_timeout = '60s'
log_lock_waits = on
EOF
}

start_cluster() {
  local attempt
  for attempt in 1 2 3 4 5; do
    port=$(free_port)
    [ "$uid" -ne 0 ] || chown "$pg_user:" "$dir"
    if as_owner "$bin/pg_ctl" start -D "$data" -l "$log" -w -t 60 -s -o "-p $port" > /dev/null 2>&1; then
      return 0
    fi
    # The port may have been taken between the choice and the bind: try another one.
    grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null || return 1
    say "port $port was taken (attempt $attempt); trying another"
  done
  return 1
}

create_role_and_database() {
  local password
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  admin_psql <<EOF
CREATE ROLE trellis LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE trellis OWNER trellis;
EOF
  printf 'postgres://trellis:%s@127.0.0.1:%s/trellis\n' "$password" "$port" > "$url_file"
  [ "$uid" -ne 0 ] || chown "$pg_user:" "$url_file"
  chmod 0600 "$url_file"
}

start() {
  if [ -n "${TRELLIS_TEST_POSTGRES_URL:-}" ]; then
    printf '%s\n' "$TRELLIS_TEST_POSTGRES_URL"
    return
  fi
  if running; then
    cat "$url_file"
    return
  fi
  if [ -f "$data/PG_VERSION" ] && [ -f "$url_file" ]; then
    # Left stopped (a reboot, a killed test run): start it again on a free port; the role and
    # database are there.
    as_owner "$bin/pg_ctl" stop -D "$data" -m immediate -w > /dev/null 2>&1 || true
    if start_cluster; then
      sed -i "s/@127\.0\.0\.1:[0-9]*\//@127.0.0.1:$port\//" "$url_file"
      cat "$url_file"
      return
    fi
    say "the cluster in $dir did not start again; making a new one"
  fi
  init_cluster
  start_cluster || { cat "$log" >&2; die "the cluster did not start (log above)"; }
  create_role_and_database
  say "PostgreSQL $(cat "$data/PG_VERSION") running in $dir on 127.0.0.1:$port"
  cat "$url_file"
}

# --- stop ------------------------------------------------------------------------------------
stop() {
  [ -d "$dir" ] || return 0
  if [ -f "$data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" stop -D "$data" -m fast -w -t 30 -s > /dev/null 2>&1 ||
      as_owner "$bin/pg_ctl" stop -D "$data" -m immediate -w -t 30 -s > /dev/null 2>&1 ||
      say "pg_ctl stop failed; see $log"
  fi
  remove_dir
}

bin=$(find_bin)
pg_user=$(owner)
port=

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then cat "$url_file"; else exit 1; fi
    ;;
  env)
    url=$(start)
    printf 'export TRELLIS_TEST_POSTGRES_URL=%q\n' "$url"
    ;;
  *) die "usage: $0 start|stop|status|env" ;;
esac
