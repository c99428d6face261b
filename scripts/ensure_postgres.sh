#!/usr/bin/env bash
# The MLflow tracking-server tests start a throwaway PostgreSQL 15 cluster; install the server if missing.
set -euo pipefail
if command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing PostgreSQL server (Debian package postgresql-15) for the tracking-server tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
else
  echo "note: PostgreSQL server not found; the PostgreSQL tracking-server tests will be skipped." \
       "Install it with: apt-get install postgresql-15" >&2
fi
