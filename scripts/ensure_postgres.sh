#!/usr/bin/env bash
# The MLflow tracking-server tests start a throwaway PostgreSQL cluster (any version; tests/mlflow_fixtures.py
# finds its bin directory the same way). Install the server if missing; fail when that is not possible.
set -euo pipefail
found() {
  [ -x "${NCF_PG_BIN:-/nonexistent}/initdb" ] || command -v initdb >/dev/null ||
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if found; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing the PostgreSQL server (Debian package postgresql) for the tracking-server tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! found; then
  echo "error: PostgreSQL server not found (no initdb) and it cannot be installed here (needs root and apt-get);" \
       "install it (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) or set NCF_PG_BIN" \
       "to its bin directory" >&2
  exit 1
fi
