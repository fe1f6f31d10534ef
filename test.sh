#!/usr/bin/env bash
# Install what the tests need (Debian packages, .venv, a PostgreSQL server)
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh

ensure_debian_packages python3-venv redis-server postgresql-client postgresql \
  chromium fonts-dejavu-core
ensure_venv "[test,bench]"
ensure_postgres

exec .venv/bin/pytest "$@"
