#!/usr/bin/env bash
# The whole test suite, on a fresh machine with nothing preinstalled: installs or starts what
# the tests need, then runs `cargo test`, the runtime's black-box tests a second time on
# PostgreSQL, and the API contract check. `.ci/run` calls this
# same script. Extra arguments go to `cargo test` (e.g. `./test.sh import`).
#
# What it brings, each only when missing:
# - a Python virtual environment of its own (target/test-venv, or $TRELLIS_TEST_VENV) with
#   aiosmtpd (the real SMTP server the email tests deliver to) and schemathesis (the API
#   contract check), pinned in tests/support/requirements.txt;
# - Debian's kannel and kannel-extras (a real SMS gateway and its fake SMS centre), postfix
#   (smtp-sink and smtp-source for the benchmark smoke run), libfaketime (the wall clock
#   jumping under a running server) and postgresql (the PostgreSQL backend's tests), through
#   apt-get, as root or sudo;
# - a throwaway PostgreSQL cluster (tests/support/postgres.sh: initdb and pg_ctl as an
#   unprivileged user, a temporary folder, 127.0.0.1 on a free port), its URL exported as
#   TRELLIS_TEST_POSTGRES_URL and the cluster stopped when this script exits, however it
#   exits. With TRELLIS_TEST_POSTGRES_URL already set, that database is used instead.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '== %s\n' "$*"; }

# --- Debian packages ------------------------------------------------------------------------
need_apt=()
[ -x /usr/sbin/bearerbox ] || need_apt+=(kannel)
[ -x /usr/lib/kannel/test/fakesmsc ] || need_apt+=(kannel-extras)
[ -x /usr/sbin/smtp-sink ] || need_apt+=(postfix)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" > /dev/null || need_apt+=(libfaketime)
compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || need_apt+=(postgresql)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "test.sh: the tests need the Debian packages ${need_apt[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" > /dev/null
fi

# --- Python tools in a virtual environment of their own -------------------------------------
venv="${TRELLIS_TEST_VENV:-$PWD/target/test-venv}"
requirements="tests/support/requirements.txt"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
  say "preparing the test virtual environment in $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
export TRELLIS_TEST_PYTHON="$venv/bin/python"
export PATH="$venv/bin:$PATH"

# --- a throwaway PostgreSQL cluster ---------------------------------------------------------
if [ -z "${TRELLIS_TEST_POSTGRES_URL:-}" ]; then
  say "starting a throwaway PostgreSQL cluster"
  # Armed before the start, so a cluster that half-started is stopped too.
  trap 'tests/support/postgres.sh stop' EXIT
  TRELLIS_TEST_POSTGRES_URL=$(tests/support/postgres.sh start)
fi
export TRELLIS_TEST_POSTGRES_URL

# --- the tests ------------------------------------------------------------------------------
# The CDNOW sample the predictive models are tested against: inside the `lifetimes` wheel
# on PyPI (the data's licence is unstated, so it is fetched, not committed).
cdnow="$PWD/target/cdnow"
tests/support/fetch_cdnow.sh "$cdnow" > /dev/null
export TRELLIS_CDNOW_SUMMARY="$cdnow/cdnow_customers_summary.csv"

say "cargo test"
cargo test --locked --features crash-points "$@"

if [ $# -eq 0 ]; then
  # The runtime's black-box tests once more, every app on a fresh PostgreSQL schema instead
  # of a SQLite file (tests/it/app.rs reads TRELLIS_TEST_STORE).
  say "cargo test --test it, on PostgreSQL"
  TRELLIS_TEST_STORE=postgres cargo test --locked --features crash-points --test it
fi

if [ $# -eq 0 ] && [ -x tests/support/schemathesis.sh ]; then
  say "the API contract (schemathesis against /v1/openapi.json)"
  cargo build --locked --quiet --bin trellis
  tests/support/schemathesis.sh "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/trellis"
fi
