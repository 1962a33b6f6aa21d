#!/usr/bin/env bash
# Run a command with a throw-away PostgreSQL server, so the state-store contract suite also
# runs against PostgreSQL: BIOFED_TEST_POSTGRES_URL names it. Where no PostgreSQL server is
# installed (no initdb), the command runs as it is and those tests are skipped.
set -euo pipefail
if [ -n "${BIOFED_TEST_POSTGRES_URL:-}" ] || ! command -v initdb >/dev/null 2>&1 \
   || ! command -v pg_ctl >/dev/null 2>&1; then
  exec "$@"
fi
dir=$(mktemp -d /tmp/biofed-pg-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" = "0" ]; then   # initdb refuses to run as root
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  "${as_pg[@]}" pg_ctl -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
"${as_pg[@]}" initdb -D "$dir/data" -A trust -U biofed >/dev/null
# Members of biofed_password_auth must log in with their password (first matching line
# wins), so tests can show that a password supplied by an environment variable is used.
hba="$dir/data/pg_hba.conf"
{ echo "host all +biofed_password_auth 127.0.0.1/32 scram-sha-256"; cat "$hba"; } >"$hba.new"
mv "$hba.new" "$hba"
[ "$(id -u)" = "0" ] && chown postgres "$hba"
"${as_pg[@]}" pg_ctl -D "$dir/data" -l "$dir/log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
"${as_pg[@]}" psql -q -h "$dir" -p "$port" -U biofed -d postgres \
  -c "CREATE ROLE biofed_password_auth NOLOGIN" >/dev/null
export BIOFED_TEST_POSTGRES_URL="postgresql+psycopg://biofed@127.0.0.1:$port/postgres"
"$@"
