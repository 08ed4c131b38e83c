#!/usr/bin/env bash
# Runs the whole test suite: against SQLite always, and against PostgreSQL too.
#
# PostgreSQL: uses UNWIND_TEST_POSTGRES_URL when set; otherwise a server answering on
# 127.0.0.1:5432 (user postgres); otherwise it starts the local cluster, or creates a throwaway
# one under target/pgtest when only the PostgreSQL binaries are installed. With none of these the
# PostgreSQL tests are skipped (under CI=true they fail instead: CI must run them).
set -euo pipefail
cd "$(dirname "$0")/.."

pg_up() { pg_isready -q -h 127.0.0.1 -p "$1" 2>/dev/null; }

ensure_postgres() {
  if [ -n "${UNWIND_TEST_POSTGRES_URL:-}" ]; then return 0; fi
  command -v pg_isready >/dev/null 2>&1 || { echo "test.sh: PostgreSQL client tools not installed"; return 1; }
  if pg_up 5432; then
    export UNWIND_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"; return 0
  fi
  if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do pg_up 5432 && break; sleep 0.5; done
    if pg_up 5432; then
      export UNWIND_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/postgres"; return 0
    fi
  fi
  # A throwaway cluster owned by the postgres user (initdb refuses to run as root).
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$bindir" ] && id postgres >/dev/null 2>&1; then
    local dir="$PWD/target/pgtest"
    mkdir -p "$dir" && chown postgres "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
      su postgres -c "$bindir/initdb -D '$dir' -A trust -U postgres" >/dev/null
    fi
    pg_up 55432 || su postgres -c "$bindir/pg_ctl -D '$dir' -o '-p 55432 -k $dir -c listen_addresses=127.0.0.1' -l '$dir/log' -w start" >/dev/null
    if pg_up 55432; then
      export UNWIND_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:55432/postgres"; return 0
    fi
  fi
  echo "test.sh: no PostgreSQL available"
  return 1
}

if ensure_postgres; then
  echo "test.sh: PostgreSQL tests use ${UNWIND_TEST_POSTGRES_URL}"
else
  echo "test.sh: PostgreSQL tests will be skipped"
fi
cargo test --workspace --locked "$@"
