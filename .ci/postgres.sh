#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on loopback for the store tests; prints its URL.
# Installs Debian's postgresql when it is missing. Usage: eval "$(bash .ci/postgres.sh)"
set -euo pipefail
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
bin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
dir=$(mktemp -d /tmp/verifier-pg.XXXXXX)
port=${PGPORT_TEST:-54329}
chown postgres "$dir" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
as_pg "$bin/initdb -D $dir/data -U postgres --auth=trust -E UTF8" >&2
as_pg "$bin/pg_ctl -D $dir/data -l $dir/log -w -o '-p $port -k $dir -c listen_addresses=127.0.0.1' start" >&2
as_pg "$bin/createdb -h 127.0.0.1 -p $port -U postgres verifier_test" >&2
echo "export TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:$port/verifier_test"
echo "export TEST_PG_DATADIR=$dir/data TEST_PG_BIN=$bin"
