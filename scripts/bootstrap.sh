# Shared steps of ./demo.sh and ./test.sh: Debian packages, PostgreSQL for the
# tests, and the project's virtualenv in .venv. Sourced, not run.
#
# Environment:
#   TSHJOBS_PYTHON        Python 3.11+ used to create .venv (default: python3)
#   TSHJOBS_TEST_PG_URL   PostgreSQL server for the tests (default:
#                         postgresql://postgres@127.0.0.1:5432/postgres)

info() { printf 'tshjobs: %s\n' "$*" >&2; }
fatal() { printf 'tshjobs: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    fatal "need root to run: $* (install sudo or run as root)"
  fi
}

# Install the Debian packages among "$@" that are not installed yet.
ensure_debian_packages() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0

  command -v apt-get >/dev/null 2>&1 \
    || fatal "missing packages ${missing[*]}, and apt-get is not available"
  info "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends "${missing[@]}" >/dev/null
}

# Create .venv and install the project with the given extras ("" or
# "[test,bench]"), again only when pyproject.toml changed since the last
# install or the extras asked for were not installed. The full set covers
# the smaller one, so ./demo.sh after ./test.sh installs nothing.
ensure_venv() {
  local extras=$1 python=${TSHJOBS_PYTHON:-python3} stamp=.venv/.tshjobs-installed
  local digest installed
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fatal "$python is older than Python 3.11; set TSHJOBS_PYTHON"
  [ -x .venv/bin/python ] || { info "creating .venv"; "$python" -m venv .venv; }

  digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
  installed=$(cat "$stamp" 2>/dev/null || true)
  if [ "$installed" = "$digest $extras" ] || [ "$installed" = "$digest [test,bench]" ]; then
    return 0
  fi

  info "installing tshjobs$extras into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e ".$extras"
  printf '%s' "$digest $extras" > "$stamp"
}

pg_reachable() {
  .venv/bin/python - "$1" <<'PY' >/dev/null 2>&1
import sys, psycopg
psycopg.connect(sys.argv[1], connect_timeout=3).close()
PY
}

# Make sure a PostgreSQL server accepts the tests, starting or installing one
# when needed, and export TSHJOBS_TEST_PG_URL naming it.
ensure_postgres() {
  local url=${TSHJOBS_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
  if pg_reachable "$url"; then
    export TSHJOBS_TEST_PG_URL=$url
    return 0
  fi

  ensure_debian_packages postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  info "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  for _ in $(seq 50); do pg_isready -q && break; sleep 0.2; done

  # A fresh Debian cluster takes password logins on 127.0.0.1, so the tests
  # connect over the local socket as a superuser named after this user.
  url="postgresql:///postgres?host=/var/run/postgresql"
  as_root runuser -u postgres -- psql -q -c \
    "DO \$\$ BEGIN CREATE ROLE \"$(id -un)\" SUPERUSER LOGIN;
     EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;" >/dev/null
  pg_reachable "$url" || fatal "PostgreSQL does not accept connections at $url"
  export TSHJOBS_TEST_PG_URL=$url
}
