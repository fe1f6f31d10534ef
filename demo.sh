#!/usr/bin/env bash
# Install what the demo needs (.venv, fonts) and start the appliance on
# embedded defaults. Extra arguments go to `tshjobs demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/bootstrap.sh

ensure_debian_packages python3-venv fonts-dejavu-core
ensure_venv ""

exec .venv/bin/tshjobs demo "$@"
