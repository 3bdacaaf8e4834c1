#!/usr/bin/env bash
# Make sure a PostgreSQL server binary (initdb) is installed, for the integration tests that start their own
# throwaway cluster on 127.0.0.1 (tests/postgres.py). Called by `make setup`; safe to re-run (does nothing when
# PostgreSQL is already there).
#
# On Debian/Ubuntu as root (or with passwordless sudo) it installs Debian's `postgresql` package (PostgreSQL 15 on
# Debian 12). The package's postinst may create and start the system cluster (15/main on port 5432); the tests
# never use it (they run their own cluster on a free port), and this script neither starts nor stops it.
# Without root or sudo it only explains what to install and exits 0, so `make test` still runs: the PostgreSQL
# tests then fail with a message saying the same.
set -euo pipefail

find_initdb() {
    if command -v initdb >/dev/null 2>&1; then
        command -v initdb
        return 0
    fi
    local candidate
    for candidate in /usr/lib/postgresql/*/bin/initdb; do
        if [[ -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if initdb="$(find_initdb)"; then
    echo "ensure_postgres: PostgreSQL found ($initdb)"
    exit 0
fi

explain() {
    echo "ensure_postgres: PostgreSQL is not installed, and this script cannot install it ($1)." >&2
    cat >&2 <<'MSG'
  The tests marked `server` that need a PostgreSQL server (tests/test_postgres_fixture.py and every test that uses
  tests/postgres.py: the MLflow and Prefect stores on PostgreSQL) will fail until it is.
  Install it, then re-run `make test`:
    Debian/Ubuntu:  sudo apt-get install postgresql      (or as root: apt-get install postgresql)
    other systems:  install the PostgreSQL server so that `initdb` and `pg_ctl` are on PATH
MSG
}

if ! command -v apt-get >/dev/null 2>&1; then
    explain "no apt-get on this machine"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    explain "not root, and no passwordless sudo"
    exit 0
fi

echo "ensure_postgres: installing PostgreSQL with apt-get (Debian package 'postgresql')"
${as_root[@]+"${as_root[@]}"} apt-get update -qq
${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql

if initdb="$(find_initdb)"; then
    echo "ensure_postgres: PostgreSQL installed ($initdb)"
else
    echo "ensure_postgres: apt-get installed 'postgresql' but no initdb was found" \
        "(looked on PATH and in /usr/lib/postgresql/*/bin)" >&2
    exit 1
fi
